# examples/faq/topics.py
"""Channels and topics: a group per topic, which connections join and leave."""

from actors import BackplaneUnavailable
from supervisor import App, Handler

app = App()


@app.route("/topics")
class Topics(Handler):
    """Text commands: ``join T``, ``leave T`` and ``post T some words``."""

    async def on_connect(self) -> None:
        user = self.conn.request.query_param("user")
        if user:  # ?user=NAME, for message_some() below
            self.context.register(f"user:{user}")

    async def on_message(self, message: str | bytes) -> None:
        command, _, rest = str(message).partition(" ")
        topic, _, text = rest.partition(" ")
        if command == "join":
            self.context.join(f"topic:{topic}")
            await self.conn.send(f"joined {topic}")
        elif command == "leave":
            self.context.leave(f"topic:{topic}")
            await self.conn.send(f"left {topic}")
        elif command == "post":
            try:
                await self.context.publish(f"topic:{topic}", f"[{topic}] {text}")
            except BackplaneUnavailable:  # with --redis while Redis is down (see message_all.py)
                await self.conn.send(f"not posted to {topic} on the other servers: try again later")
        else:
            await self.conn.send(f"unknown command {command!r}")


async def publish(topic: str, text: str) -> None:
    """Reach the topic's subscribers from anywhere in the server process."""
    await app.publish(f"topic:{topic}", f"[{topic}] {text}")


async def message_some(users: list[str], text: str) -> None:
    """Some users, by name (message_user.py shows where names come from): one send each."""
    for user in users:
        await app.send(f"user:{user}", text)
