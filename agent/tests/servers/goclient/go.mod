module lostwrite.dev/goclient

go 1.19
