// goclient GETs a URL -n times with net/http over TLS (certificates are not verified: the test
// servers' are self-signed) and fails unless every answer is 200 over the expected protocol.
//
// -keep-alive=false opens a new connection per request; -http2=false offers only HTTP/1.1 by
// ALPN (-want-proto HTTP/1.1 accepts a server that picks HTTP/1.1 anyway). -idle waits that
// long after the requests (an HTTP/2 server's idle timeout then sends GOAWAY and closes the
// connection) before the pooled connections are closed.
package main

import (
	"crypto/tls"
	"flag"
	"fmt"
	"io"
	"log"
	"net/http"
	"os"
	"time"
)

func main() {
	url := flag.String("url", "", "URL to GET")
	n := flag.Int("n", 1, "number of requests")
	keepAlive := flag.Bool("keep-alive", true, "reuse connections (false: one connection per request)")
	useHTTP2 := flag.Bool("http2", true, "offer HTTP/2 by ALPN (false: HTTP/1.1 only)")
	idle := flag.Duration("idle", 0, "wait this long after the requests before closing idle connections")
	want := flag.String("want-proto", "", "the protocol every answer must come in (default HTTP/2.0 with -http2, else HTTP/1.1)")
	flag.Parse()

	tr := &http.Transport{
		TLSClientConfig:   &tls.Config{InsecureSkipVerify: true},
		DisableKeepAlives: !*keepAlive,
		ForceAttemptHTTP2: *useHTTP2,
	}
	if !*useHTTP2 {
		tr.TLSNextProto = map[string]func(string, *tls.Conn) http.RoundTripper{}
	}
	client := &http.Client{Transport: tr, Timeout: 10 * time.Second}
	if *want == "" {
		*want = "HTTP/1.1"
		if *useHTTP2 {
			*want = "HTTP/2.0"
		}
	}
	for i := 0; i < *n; i++ {
		resp, err := client.Get(*url)
		if err != nil {
			log.Fatalf("request %d: %v", i, err)
		}
		body, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		if err != nil {
			log.Fatalf("request %d: reading the body: %v", i, err)
		}
		if resp.StatusCode != http.StatusOK || resp.Proto != *want {
			log.Fatalf("request %d: %s %s (want 200 %s)", i, resp.Proto, resp.Status, *want)
		}
		fmt.Printf("%d %s %d %d\n", i, resp.Proto, resp.StatusCode, len(body))
	}
	time.Sleep(*idle)
	tr.CloseIdleConnections()
	os.Exit(0)
}
