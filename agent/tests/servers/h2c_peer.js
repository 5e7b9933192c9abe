// HTTP/2 over cleartext (h2c, prior knowledge) with Node's built-in http2 module.
//
//   node h2c_peer.js server PORT [--close-after N | --idle-timeout MS]
//     Answers every stream with 200 and the body "ok <path>". Prints "ready" once listening.
//     --close-after N: the server closes each session (GOAWAY, then the socket) once N
//     streams of it are done. --idle-timeout MS: the server closes a session idle for MS ms.
//   node h2c_peer.js client PORT REQUESTS close|wait
//     One connection: REQUESTS/2 requests one after another, the rest concurrently, each
//     checked. Then "close": the client closes the session (GOAWAY, then the socket); "wait":
//     the client waits for the server's GOAWAY and close. Prints "done <mode> <requests>" and
//     exits 0 only if every request was answered and the session ended as asked.
"use strict";
const http2 = require("http2");

const [role, portArg, ...rest] = process.argv.slice(2);
const port = Number(portArg);

function fail(msg) {
  console.error(msg);
  process.exit(1);
}

if (role === "server") {
  const closeAfter = rest[0] === "--close-after" ? Number(rest[1]) : 0;
  const idleTimeout = rest[0] === "--idle-timeout" ? Number(rest[1]) : 0;
  const server = http2.createServer();
  server.on("session", (session) => {
    let done = 0;
    if (idleTimeout) {
      session.setTimeout(idleTimeout, () => session.close());
    }
    session.on("stream", (stream) => {
      stream.on("close", () => {
        done += 1;
        if (closeAfter && done === closeAfter) session.close();
      });
    });
    session.on("error", (e) => console.error("session error", e.message));
  });
  server.on("stream", (stream, headers) => {
    stream.respond({ ":status": 200, "content-type": "text/plain" });
    stream.end(`ok ${headers[":path"]}`);
  });
  server.listen(port, "127.0.0.1", () => console.log("ready"));
} else if (role === "client") {
  const [requestsArg, mode] = rest;
  const requests = Number(requestsArg);
  if (!(requests > 0) || !["close", "wait"].includes(mode)) fail("usage: client PORT N close|wait");
  setTimeout(() => fail(`timed out (${mode})`), 8000).unref();
  const session = http2.connect(`http://127.0.0.1:${port}`);
  session.on("error", (e) => fail(`session error: ${e.message}`));
  let goaway = null;
  session.on("goaway", (code) => (goaway = code));
  const closed = new Promise((resolve) => session.on("close", resolve));

  const get = (path) =>
    new Promise((resolve, reject) => {
      const req = session.request({ ":path": path });
      let status = 0;
      let body = "";
      req.setEncoding("utf8");
      req.on("response", (h) => (status = h[":status"]));
      req.on("data", (d) => (body += d));
      req.on("end", () =>
        status === 200 && body === `ok ${path}`
          ? resolve()
          : reject(new Error(`${path}: ${status} ${JSON.stringify(body)}`)),
      );
      req.on("error", reject);
      req.end();
    });

  (async () => {
    const sequential = Math.floor(requests / 2);
    for (let i = 0; i < sequential; i++) await get(`/seq/${i}`);
    const batch = [];
    for (let i = sequential; i < requests; i++) batch.push(get(`/par/${i}`));
    await Promise.all(batch);
    if (mode === "close") {
      session.close();
      await closed;
      if (goaway !== null) fail(`the server sent GOAWAY ${goaway} first`);
    } else {
      await closed;
      if (goaway !== 0) fail(`no GOAWAY(NO_ERROR) from the server: ${goaway}`);
    }
    console.log(`done ${mode} ${requests}`);
  })().catch((e) => fail(e.message));
} else {
  fail("usage: h2c_peer.js server|client PORT ...");
}
