# examples/server/ops.py
"""A plain HTTP page beside the WebSocket route and wsup's own /healthz, /readyz, /metrics."""

from supervisor import App, Handler, HTTPResponse, Request

app = App()

PAGE = """<!doctype html>
<title>echo</title>
<script>
  const ws = new WebSocket(`ws://${location.host}/echo`);
  ws.onmessage = (event) => document.body.append(event.data, document.createElement("br"));
  ws.onopen = () => ws.send("hello from the browser");
</script>
"""


@app.http("/")
async def index(request: Request) -> HTTPResponse:
    """GET / serves the page that opens the WebSocket."""
    return HTTPResponse(PAGE, content_type="text/html; charset=utf-8")


@app.route("/echo")
class Echo(Handler):
    """Sends every message straight back."""

    async def on_message(self, message: str | bytes) -> None:
        await self.conn.send(message)
