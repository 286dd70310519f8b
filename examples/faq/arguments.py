# examples/faq/arguments.py
"""Arguments for handlers: shared app state, constructor arguments, route parameters."""

from dataclasses import dataclass

from supervisor import App, Handler


@dataclass
class Settings:
    """Anything handlers share: configuration, a database pool, a cache."""

    greeting: str


app = App(state=Settings(greeting="hello"))


class Greeter(Handler):
    """Greets ``/greet/{name}`` with the app's greeting and its own punctuation."""

    def __init__(self, punctuation: str) -> None:
        self.punctuation = punctuation

    async def on_connect(self) -> None:
        settings: Settings = self.app.state
        name = self.params["name"]
        await self.conn.send(f"{settings.greeting} {name}{self.punctuation}")


# kwargs go to the constructor, once per connection (and again on a restart).
app.add_route("/greet/{name}", Greeter, kwargs={"punctuation": "!"})
