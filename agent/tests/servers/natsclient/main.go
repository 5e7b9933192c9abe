package main

import (
	"fmt"
	"os"
	"strconv"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
)

// natsclient URL PUBLISHERS: one subscriber and PUBLISHERS publishers, each on its own
// connection; each publisher sends 10 messages, flushes and closes; the subscriber closes
// once it has every message.
func main() {
	url := os.Args[1]
	pubs, _ := strconv.Atoi(os.Args[2])
	sub, err := nats.Connect(url)
	if err != nil {
		panic(err)
	}
	var got sync.WaitGroup
	got.Add(pubs * 10)
	if _, err := sub.Subscribe("lostwrite.test", func(m *nats.Msg) { got.Done() }); err != nil {
		panic(err)
	}
	if err := sub.Flush(); err != nil {
		panic(err)
	}
	var wg sync.WaitGroup
	for i := 0; i < pubs; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			nc, err := nats.Connect(url)
			if err != nil {
				panic(err)
			}
			for j := 0; j < 10; j++ {
				if err := nc.Publish("lostwrite.test", []byte(fmt.Sprintf("message %d from %d", j, i))); err != nil {
					panic(err)
				}
			}
			if err := nc.Flush(); err != nil {
				panic(err)
			}
			nc.Close()
		}(i)
	}
	wg.Wait()
	done := make(chan struct{})
	go func() { got.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		panic("the subscriber did not get every message")
	}
	sub.Close()
	fmt.Println("published", pubs*10)
}
