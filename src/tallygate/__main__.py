from tallygate.cli.main import run

run()
