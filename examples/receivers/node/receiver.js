// An example receiver for amocrm-connector's outgoing webhooks: plain `node:http`, the signature checked
// with @octokit/webhooks-methods `verify()` (our `X-Signature` is GitHub's `X-Hub-Signature-256` format:
// `sha256=` + lowercase hex HMAC-SHA256 of the raw body, keyed with the subscription's secret).
//
//   CONNECTOR_WEBHOOK_SECRET=...   the `secret` given when creating the subscription (required)
//   PORT=3000 HOST=127.0.0.1       where to listen (PORT=0: any free port; the bound one is printed)
//   RECEIVER_LOG=path.jsonl        optional: one JSON line per delivery accepted or rejected
//
// Answers 200 to a verified delivery (a repeated event id is acknowledged again but processed once),
// 401 to a missing or wrong signature, 400 to a verified body that is not JSON, 405 to other methods.
// GET /health answers 200.

import http from 'node:http';
import fs from 'node:fs';
import { verify } from '@octokit/webhooks-methods';

const SECRET = process.env.CONNECTOR_WEBHOOK_SECRET;
if (!SECRET) {
  console.error('CONNECTOR_WEBHOOK_SECRET is required');
  process.exit(2);
}
const HOST = process.env.HOST || '127.0.0.1';
const PORT = Number(process.env.PORT ?? 3000);
const LOG = process.env.RECEIVER_LOG || '';
const MAX_BODY = 1024 * 1024;

const seen = new Set(); // event ids already processed: delivery is at least once
const utf8 = new TextDecoder('utf-8', { fatal: true });

function record(entry) {
  const line = JSON.stringify({ at: new Date().toISOString(), receiver: 'node', ...entry });
  if (LOG) fs.appendFileSync(LOG, line + '\n');
  else console.log(line);
}

function answer(res, status, body = '') {
  res.writeHead(status, { 'Content-Type': 'text/plain; charset=utf-8' }).end(body);
}

async function handle(req, res, raw) {
  const signature = req.headers['x-signature'] || '';
  const webhookId = req.headers['x-webhook-id'] || null;
  const reject = (reason) => {
    record({ result: 'rejected', reason, webhook_id: webhookId, path: req.url });
    answer(res, 401, 'bad signature\n');
  };
  if (!signature) return reject('missing X-Signature');

  // verify() takes the payload as a string and HMACs its UTF-8 encoding. Decode strictly, so that the
  // string is exactly the bytes that were signed (a lenient decode could map different bytes to one string).
  let text;
  try {
    text = utf8.decode(raw);
  } catch {
    return reject('body is not UTF-8');
  }
  let ok = false;
  try {
    ok = text.length > 0 && (await verify(SECRET, text, signature));
  } catch {
    ok = false; // verify() throws on empty arguments
  }
  if (!ok) return reject('signature mismatch');

  let event;
  try {
    event = JSON.parse(text);
  } catch {
    record({ result: 'rejected', reason: 'signed body is not JSON', webhook_id: webhookId });
    return answer(res, 400, 'not JSON\n');
  }
  const duplicate = seen.has(event.id);
  seen.add(event.id);
  record({
    result: 'accepted',
    id: event.id,
    event: event.event,
    seller_id: event.seller_id,
    webhook_id: webhookId,
    duplicate,
    signature,
    body: text, // the exact signed body, so a check can replay or tamper with it
  });
  // A real receiver would queue `event` here (unless `duplicate`) and do the work after answering.
  answer(res, 200, 'ok\n');
}

const server = http.createServer((req, res) => {
  if (req.method === 'GET' && req.url === '/health') return answer(res, 200, 'ok\n');
  if (req.method !== 'POST') {
    res.setHeader('Allow', 'POST');
    return answer(res, 405);
  }
  const chunks = [];
  let size = 0;
  let tooBig = false;
  req.on('data', (c) => {
    size += c.length;
    if (size > MAX_BODY) tooBig = true;
    else chunks.push(c);
  });
  req.on('end', () => {
    if (tooBig) return answer(res, 413);
    handle(req, res, Buffer.concat(chunks)).catch((e) => {
      console.error(e);
      if (!res.headersSent) answer(res, 500);
    });
  });
});

server.listen(PORT, HOST, () => {
  const { address, port } = server.address();
  console.log(`listening on http://${address}:${port}`);
});

for (const sig of ['SIGINT', 'SIGTERM']) process.on(sig, () => process.exit(0));
