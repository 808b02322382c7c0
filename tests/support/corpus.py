"""Texts whose token counts the counting tests check (every script, emoji, long runs)."""

CORPUS = [
    "The quick brown fox jumps over the lazy dog. It's 3:45pm, isn't it?",
    "def count(xs: list[int]) -> int:\n    return sum(x * 2 for x in xs if x % 3)\n",
    "東京は日本の首都です。私は毎朝コーヒーを飲みます。",
    "emoji 🎉🚀👩‍👩‍👧‍👦 and flags 🇵🇹🇯🇵, combining é and ñ",
    '{"id": 12345, "items": [{"name": "a", "tags": ["x", "y"]}], "ok": true}',
    "Ünïcödé — “quotes” and\ttabs\r\nand   multiple    spaces\n\n\n",
    "<|endoftext|> special-looking text is ordinary text",
]
