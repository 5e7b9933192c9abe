module lostwrite.dev/seedsrv

go 1.19
