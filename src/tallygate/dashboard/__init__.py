"""The web dashboard at `/dashboard` (docs/dashboard.md): server-rendered pages over the
read models in reports/, sign-in with the admin or viewer key, changes to keys and flags.
`report_html` is the self-contained HTML report the CLI and the demo write."""
