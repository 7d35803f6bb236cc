// Package unixsock serves HTTP on a unix socket the way the daemon's
// sockets (the control socket, configchange.socket) need: never taking
// over a socket another process answers on, replacing a stale one, with
// the socket's mode set before the first request, and the file removed
// at shutdown.
package unixsock

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"time"
)

// ErrInUse is returned by Listen when another process answers on the
// socket.
var ErrInUse = errors.New("another process serves the socket")

// Listen listens on path with the given mode. A socket file that nobody
// answers on is stale and replaced; one that answers is refused with
// ErrInUse.
func Listen(path string, mode os.FileMode) (net.Listener, error) {
	if c, err := net.DialTimeout("unix", path, time.Second); err == nil {
		c.Close()
		return nil, fmt.Errorf("cannot listen on %s: %w", path, ErrInUse)
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("cannot remove stale socket %s: %w", path, err)
	}
	l, err := net.Listen("unix", path)
	if err != nil {
		return nil, fmt.Errorf("cannot listen on %s: %w", path, err)
	}
	if err := os.Chmod(path, mode); err != nil {
		l.Close()
		return nil, fmt.Errorf("cannot set the mode of %s: %w", path, err)
	}
	return l, nil
}

// Serve serves h on l until ctx is done, then shuts the server down
// (giving requests in flight up to grace) and removes path. The channel
// receives the server's error (nil after a shutdown).
func Serve(ctx context.Context, l net.Listener, path string, h http.Handler, grace time.Duration) <-chan error {
	srv := &http.Server{Handler: h, ReadHeaderTimeout: 5 * time.Second}
	done := make(chan error, 1)
	go func() {
		err := srv.Serve(l)
		if errors.Is(err, http.ErrServerClosed) {
			err = nil
		}
		done <- err
	}()
	go func() {
		<-ctx.Done()
		sctx, cancel := context.WithTimeout(context.Background(), grace)
		defer cancel()
		srv.Shutdown(sctx)
		os.Remove(path)
	}()
	return done
}
