// seedsrv reproduces the incident lostwrite exists for: a net/http server whose WriteTimeout is
// shorter than its handler. The handler's write lands in net/http's buffer and "succeeds"; the
// flush then fails on the expired deadline before any write syscall, and the server closes the
// connection. The client sees an empty reply; the server logs nothing.
//
// GET /     sleeps -sleep, then writes a body (the lost response).
// GET /fast answers at once (healthy traffic).
// GET /big  writes -big bytes: to a client that reads slowly, the write deadline expires while a
// write waits for room, and net/http cuts the response short.
//
// With -tls it serves HTTPS (and HTTP/2, which net/http offers by ALPN) with a self-signed
// certificate made at start, so no files are needed. -idle-timeout sets http.Server's
// IdleTimeout: an idle HTTP/1.1 connection is closed, an idle HTTP/2 one gets a GOAWAY first.
package main

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"flag"
	"fmt"
	"log"
	"math/big"
	"net"
	"net/http"
	"time"
)

func main() {
	addr := flag.String("addr", "127.0.0.1:8800", "listen address")
	writeTimeout := flag.Duration("write-timeout", time.Second, "http.Server WriteTimeout")
	sleep := flag.Duration("sleep", 2*time.Second, "handler delay before writing on /")
	useTLS := flag.Bool("tls", false, "serve HTTPS (HTTP/1.1 and HTTP/2) with a self-signed certificate")
	idleTimeout := flag.Duration("idle-timeout", 0, "http.Server IdleTimeout (0: net/http's default)")
	big := flag.Int("big", 64<<20, "bytes /big writes")
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
	mux.HandleFunc("/big", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Length", fmt.Sprint(*big))
		chunk := make([]byte, 64<<10)
		for left := *big; left > 0; left -= len(chunk) {
			if left < len(chunk) {
				chunk = chunk[:left]
			}
			if _, err := w.Write(chunk); err != nil {
				log.Printf("/big: %v", err)
				return
			}
		}
	})
	srv := &http.Server{Addr: *addr, Handler: mux, WriteTimeout: *writeTimeout, IdleTimeout: *idleTimeout}
	scheme := "http"
	if *useTLS {
		scheme = "https"
		srv.TLSConfig = &tls.Config{Certificates: []tls.Certificate{selfSigned()}}
	}
	log.Printf("seedsrv listening on %s://%s (WriteTimeout %s, handler sleep %s)", scheme, *addr, *writeTimeout, *sleep)
	if *useTLS {
		log.Fatal(srv.ListenAndServeTLS("", ""))
	}
	log.Fatal(srv.ListenAndServe())
}

// selfSigned makes an ECDSA P-256 certificate for localhost and 127.0.0.1, valid for a day.
func selfSigned() tls.Certificate {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		log.Fatal(err)
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1),
		Subject:      pkix.Name{CommonName: "localhost"},
		NotBefore:    now.Add(-time.Hour),
		NotAfter:     now.Add(24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		DNSNames:     []string{"localhost"},
		IPAddresses:  []net.IP{net.IPv4(127, 0, 0, 1), net.IPv6loopback},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		log.Fatal(err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
}
