// tus-js-client (npm) from Node, as the web page uses it: uploads FILE to the
// tus endpoint with the given metadata, retrying and resuming on its own.
// One JSON line per event on stdout: progress, retry, success (with the
// upload's URL) or error. Used by tests/e2e/test_tus.py.
//
//   node tests/interop/tus_client.js ENDPOINT TOKEN FILE METADATA_JSON [CHUNK_BYTES]
// With TUS_UPLOAD_URL set, it resumes that upload (HEAD, then the rest).
'use strict';
const fs = require('fs');
const tus = require('tus-js-client');

const [endpoint, token, file, metadataJson, chunk] = process.argv.slice(2);
const data = fs.readFileSync(file);
const say = (o) => process.stdout.write(`${JSON.stringify(o)}\n`);
let lastPct = -1;

const upload = new tus.Upload(data, {
  endpoint,
  uploadUrl: process.env.TUS_UPLOAD_URL || null,
  metadata: JSON.parse(metadataJson),
  chunkSize: chunk ? Number(chunk) : Infinity,
  retryDelays: [0, 500, 1000, 2000, 3000, 5000, 5000, 5000],
  headers: { Authorization: `Bearer ${token}` },
  onShouldRetry(err, attempt) {
    const status = err.originalResponse ? err.originalResponse.getStatus() : 0;
    say({ event: 'retry', attempt, status, message: String(err.message).slice(0, 200) });
    return status === 0 || status === 409 || status === 423 || status >= 500;
  },
  onProgress(sent, total) {
    const pct = Math.floor((sent / total) * 100);
    if (pct !== lastPct) { lastPct = pct; say({ event: 'progress', sent, total }); }
  },
  onSuccess() { say({ event: 'success', url: upload.url }); },
  onError(err) {
    const status = err.originalResponse ? err.originalResponse.getStatus() : 0;
    say({ event: 'error', status, message: String(err.message).slice(0, 500) });
    process.exitCode = 1;
  },
});
upload.start();
