// Echo conversation with Node's `ws` client, for tests/e2e/test_node_client.py.
//
// Usage: node echo_client.js URL < SPEC_JSON
//
// SPEC: {"messages": [MESSAGE, ...], "close": {"code": 1000, "reason": "bye"}}
// MESSAGE: {"type": "text", "data": "..."}
//        | {"type": "binary", "base64": "..."}
//        | {"type": "fragments", "binary": false, "parts": ["...", ...]}  (one message, sent in parts)
//
// Sends each message once the previous one has come back, then closes with the
// given code and reason. Prints one JSON object on stdout:
// {"opened": bool, "protocol": "...", "extensions": "...",
//  "received": [{"binary": bool, "base64": "..."}, ...],
//  "close": {"code": n, "reason": "...", "wasClean": bool}, "errors": ["..."]}
'use strict';

const WebSocket = require('ws');

const TIMEOUT_MS = 15000;

function readStdin() {
  return new Promise((resolve, reject) => {
    const chunks = [];
    process.stdin.on('data', (chunk) => chunks.push(chunk));
    process.stdin.on('end', () => resolve(Buffer.concat(chunks).toString('utf8')));
    process.stdin.on('error', reject);
  });
}

async function main() {
  const url = process.argv[2];
  const spec = JSON.parse(await readStdin());
  const report = { opened: false, received: [], close: null, errors: [] };
  const ws = new WebSocket(url);
  let next = 0;

  function finish(status) {
    process.stdout.write(JSON.stringify(report) + '\n', () => process.exit(status));
  }

  // A deadlock guard: the test reads whatever happened so far.
  setTimeout(() => {
    report.errors.push(`timed out after ${TIMEOUT_MS} ms`);
    finish(2);
  }, TIMEOUT_MS).unref();

  function sendNext() {
    if (next >= spec.messages.length) {
      ws.close(spec.close.code, spec.close.reason);
      return;
    }
    const message = spec.messages[next];
    next += 1;
    if (message.type === 'text') {
      ws.send(message.data, { binary: false });
    } else if (message.type === 'binary') {
      ws.send(Buffer.from(message.base64, 'base64'), { binary: true });
    } else if (message.type === 'fragments') {
      message.parts.forEach((part, i) => {
        ws.send(part, { binary: message.binary, fin: i === message.parts.length - 1 });
      });
    } else {
      throw new Error(`unknown message type ${message.type}`);
    }
  }

  ws.on('open', () => {
    report.opened = true;
    report.protocol = ws.protocol;
    report.extensions = ws.extensions;
    sendNext();
  });
  ws.on('message', (data, isBinary) => {
    report.received.push({ binary: isBinary, base64: Buffer.from(data).toString('base64') });
    sendNext();
  });
  ws.on('error', (error) => report.errors.push(String(error)));
  ws.on('close', (code, reason) => {
    report.close = { code, reason: reason.toString('utf8') };
    finish(0);
  });
}

main().catch((error) => {
  process.stdout.write(JSON.stringify({ errors: [String(error)] }) + '\n', () => process.exit(1));
});
