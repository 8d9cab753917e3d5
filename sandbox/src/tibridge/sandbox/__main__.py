from tibridge.sandbox.cli import app

app(prog_name="tibridge sandbox")
