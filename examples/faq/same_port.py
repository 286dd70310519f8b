# examples/faq/same_port.py
"""A few plain HTTP pages beside the WebSocket routes, on the same port."""

import datetime

from supervisor import App, Handler, HTTPResponse, Request

app = App()

PAGE = """<!doctype html>
<title>clock</title>
<p id="now">connecting...</p>
<script>
  const ws = new WebSocket(`ws://${location.host}/clock`);
  ws.onmessage = (event) => { document.getElementById("now").textContent = event.data; };
  ws.onopen = () => ws.send("now");
</script>
"""


@app.http("/")
def index(request: Request) -> HTTPResponse:
    """GET / serves the page; a WebSocket upgrade never reaches this function."""
    return HTTPResponse(PAGE, content_type="text/html; charset=utf-8")


@app.route("/clock")
class Now(Handler):
    """Answers each message with the server's idea of the time."""

    async def on_message(self, message: str | bytes) -> None:
        await self.conn.send(datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"))
