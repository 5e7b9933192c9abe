// An HTTP/2 client on Node's built-in http2 module: `node h2_client.js URL N` makes N GETs of
// URL's path, all on one connection (certificates are not verified), then closes the session
// with session.close(), which sends GOAWAY and ends the connection once the streams are done.
// It prints one line per answer and exits 0 only if every answer was 200.
"use strict";
const http2 = require("http2");

const [url, n] = [process.argv[2], Number(process.argv[3])];
const path = new URL(url).pathname;
setTimeout(() => {
  console.error("timed out");
  process.exit(1);
}, 10000).unref();
const session = http2.connect(url, { rejectUnauthorized: false });
session.on("error", (e) => {
  console.error(`session error: ${e}`);
  process.exit(1);
});

function get(i) {
  return new Promise((resolve, reject) => {
    const req = session.request({ ":path": path });
    let status = 0;
    let body = "";
    req.on("response", (headers) => (status = headers[":status"]));
    req.setEncoding("utf8");
    req.on("data", (d) => (body += d));
    req.on("end", () =>
      status === 200 ? resolve(`${i} ${status} ${body.length}`) : reject(new Error(`${i}: ${status}`)),
    );
    req.on("error", reject);
    req.end();
  });
}

(async () => {
  for (let i = 0; i < n; i++) {
    console.log(await get(i));
  }
  session.close(() => console.log("closed"));
})().catch((e) => {
  console.error(String(e));
  process.exit(1);
});
