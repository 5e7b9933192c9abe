// seedsrv reproduces the incident lostwrite exists for: a net/http server whose WriteTimeout is
// shorter than its handler. The handler's write lands in net/http's buffer and "succeeds"; the
// flush then fails on the expired deadline before any write syscall, and the server closes the
// connection. The client sees an empty reply; the server logs nothing.
//
// GET /     sleeps -sleep, then writes a body (the lost response).
// GET /fast answers at once (healthy traffic).
package main

import (
	"flag"
	"fmt"
	"log"
	"net/http"
	"time"
)

func main() {
	addr := flag.String("addr", "127.0.0.1:8800", "listen address")
	writeTimeout := flag.Duration("write-timeout", time.Second, "http.Server WriteTimeout")
	sleep := flag.Duration("sleep", 2*time.Second, "handler delay before writing on /")
	flag.Parse()

	mux := http.NewServeMux()
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		time.Sleep(*sleep)
		if _, err := fmt.Fprintln(w, "hello after a slow handler"); err != nil {
			log.Printf("write error: %v", err) // never printed: the write "succeeds"
		}
	})
	mux.HandleFunc("/fast", func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintln(w, "fast hello")
	})
	srv := &http.Server{Addr: *addr, Handler: mux, WriteTimeout: *writeTimeout}
	log.Printf("seedsrv listening on %s (WriteTimeout %s, handler sleep %s)", *addr, *writeTimeout, *sleep)
	log.Fatal(srv.ListenAndServe())
}
