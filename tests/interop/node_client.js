// A user's client in another language: Node.js stubs built at run time from
// protos/ with @grpc/proto-loader, driving the whole journey over gRPC.
//   node tests/interop/node_client.js HOST:PORT VIDEO OUT.mp3
// Prints one JSON line: {"email", "job_id", "state", "error", "mp3_bytes"}.
"use strict";
const fs = require("fs");
const path = require("path");
const grpc = require("@grpc/grpc-js");
const protoLoader = require("@grpc/proto-loader");

const root = path.resolve(__dirname, "..", "..");
const definition = protoLoader.loadSync(
  ["video2mp3/auth/v1/auth.proto", "video2mp3/media/v1/media.proto"],
  {
    includeDirs: [path.join(root, "protos"), path.join(root, "gen", "third_party")],
    keepCase: true, longs: String, enums: String, defaults: true,
  },
);
const pkg = grpc.loadPackageDefinition(definition).video2mp3;

const [addr, videoPath, outPath] = process.argv.slice(2);
const creds = grpc.credentials.createInsecure();
const auth = new pkg.auth.v1.AuthService(addr, creds);
const media = new pkg.media.v1.MediaService(addr, creds);
const call = (client, method, req, md) =>
  new Promise((resolve, reject) =>
    client[method](req, md || new grpc.Metadata(), (err, res) => (err ? reject(err) : resolve(res))));

function upload(md, file) {
  return new Promise((resolve, reject) => {
    const stream = media.UploadVideo(md, (err, job) => (err ? reject(err) : resolve(job)));
    const data = fs.readFileSync(file);
    const chunk = 64 * 1024;
    stream.write({ filename: path.basename(file), body: { content_type: "video/mp4", data: data.subarray(0, chunk) } });
    for (let i = chunk; i < data.length; i += chunk) stream.write({ body: { data: data.subarray(i, i + chunk) } });
    stream.end();
  });
}

function download(md, jobId, out) {
  return new Promise((resolve, reject) => {
    const parts = [];
    media.DownloadMp3({ job_id: jobId }, md)
      .on("data", (msg) => parts.push(msg.data))
      .on("error", reject)
      .on("end", () => { const all = Buffer.concat(parts); fs.writeFileSync(out, all); resolve(all.length); });
  });
}

async function main() {
  const email = `node-${Date.now()}-${Math.floor(Math.random() * 1e6)}@example.com`;
  const password = "correct horse node";
  await call(auth, "SignUp", { email, password });
  const login = await call(auth, "Login", { email, password });
  const md = new grpc.Metadata();
  md.set("authorization", `Bearer ${login.access_token}`);
  let job = await upload(md, videoPath);
  const deadline = Date.now() + 120000;
  while (!["JOB_STATE_DONE", "JOB_STATE_FAILED"].includes(job.state) && Date.now() < deadline) {
    await new Promise((r) => setTimeout(r, 200));
    job = await call(media, "GetJob", { job_id: job.job_id }, md);
  }
  const mp3Bytes = job.state === "JOB_STATE_DONE" ? await download(md, job.job_id, outPath) : 0;
  console.log(JSON.stringify({ email, job_id: job.job_id, state: job.state, error: job.error, mp3_bytes: mp3Bytes }));
}

main().catch((err) => { console.error(`node client failed: ${err.message}`); process.exit(1); });
