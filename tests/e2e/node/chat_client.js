// Several chat participants with Node's `ws` client, for tests/e2e/test_chat.py.
//
// Usage: node chat_client.js
//
// A conversation in two halves, driven over stdin and stdout so the test can
// wait, between them, until the server has set every connection up:
//
// 1. The first stdin line is the SPEC (JSON):
//      {"clients": {"ID": "ws://...", ...},
//       "steps": [{"send": "ID", "data": "..."}          send one text message
//               | {"expect": "ID", "count": N}, ...]}    wait until ID has N messages
//    Every client connects at once. When each has opened or been refused, one
//    JSON line goes to stdout: {"settled": {"ID": {"opened": bool, "status": n|null}}}.
// 2. The next stdin line (any text) starts the steps, in order. Then every
//    open client closes with 1000 and one JSON report goes to stdout:
//      {"clients": {"ID": {"opened": bool, "status": n|null, "body": "...",
//                          "received": [MESSAGE, ...], "close": {"code": n, "reason": "..."}}},
//       "errors": ["..."]}
//    MESSAGE is the parsed JSON of a text message, or {"binary": "<base64>"}.
//    `status` and `body` are the HTTP refusal, when the handshake was refused.
'use strict';

const readline = require('readline');
const WebSocket = require('ws');

const TIMEOUT_MS = 15000;

const report = { clients: {}, errors: [] };

function finish(status) {
  process.stdout.write(JSON.stringify(report) + '\n', () => process.exit(status));
}

// A deadlock guard: the test reads whatever happened so far.
setTimeout(() => {
  report.errors.push(`timed out after ${TIMEOUT_MS} ms`);
  finish(2);
}, TIMEOUT_MS).unref();

const lines = readline.createInterface({ input: process.stdin });
const pending = [];
const waiting = [];
lines.on('line', (line) => {
  const next = waiting.shift();
  if (next) next(line);
  else pending.push(line);
});

function readLine() {
  return new Promise((resolve) => {
    if (pending.length) resolve(pending.shift());
    else waiting.push(resolve);
  });
}

function connect(id, url) {
  const entry = { opened: false, status: null, body: '', received: [], close: null };
  report.clients[id] = entry;
  const ws = new WebSocket(url);
  const waiters = [];
  const client = { id, ws, entry, waiters };
  const settled = new Promise((resolve) => {
    ws.on('open', () => {
      entry.opened = true;
      resolve();
    });
    ws.on('unexpected-response', (req, res) => {
      // The handshake was refused with an HTTP response: keep its status and body.
      entry.status = res.statusCode;
      res.setEncoding('utf8');
      res.on('data', (chunk) => {
        entry.body += chunk;
      });
      res.on('end', () => {
        req.destroy();
        resolve();
      });
    });
    ws.on('error', (error) => {
      report.errors.push(`${id}: ${error}`);
      resolve();
    });
  });
  client.closed = new Promise((resolve) => {
    ws.on('close', (code, reason) => {
      entry.close = { code, reason: reason.toString('utf8') };
      resolve();
    });
  });
  ws.on('message', (data, isBinary) => {
    if (isBinary) {
      entry.received.push({ binary: Buffer.from(data).toString('base64') });
    } else {
      try {
        entry.received.push(JSON.parse(data.toString('utf8')));
      } catch (error) {
        entry.received.push({ unparsable: data.toString('utf8') });
      }
    }
    for (const waiter of waiters.splice(0)) waiter();
  });
  client.settled = settled;
  return client;
}

function received(client, count) {
  return new Promise((resolve) => {
    const check = () => {
      if (client.entry.received.length >= count) resolve();
      else client.waiters.push(check);
    };
    check();
  });
}

async function main() {
  const spec = JSON.parse(await readLine());
  const clients = {};
  for (const [id, url] of Object.entries(spec.clients)) clients[id] = connect(id, url);
  await Promise.all(Object.values(clients).map((client) => client.settled));
  const settled = {};
  for (const [id, client] of Object.entries(clients)) {
    settled[id] = { opened: client.entry.opened, status: client.entry.status };
  }
  process.stdout.write(JSON.stringify({ settled }) + '\n');

  await readLine();
  for (const step of spec.steps) {
    if (step.send !== undefined) {
      clients[step.send].ws.send(step.data, { binary: false });
    } else if (step.expect !== undefined) {
      await received(clients[step.expect], step.count);
    } else {
      throw new Error(`unknown step ${JSON.stringify(step)}`);
    }
  }
  const open = Object.values(clients).filter((client) => client.entry.opened);
  for (const client of open) client.ws.close(1000, 'done');
  await Promise.all(open.map((client) => client.closed));
  finish(0);
}

main().catch((error) => {
  report.errors.push(String(error && error.stack ? error.stack : error));
  finish(1);
});
