from tibridge.cli.main import app

app(prog_name="tibridge")
