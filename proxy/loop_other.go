//go:build !linux

package proxy

import (
	"errors"
	"net"
	"time"
)

// Event loops need epoll; elsewhere every session keeps a goroutine per direction.

type eventLoop struct{}

type loopConn struct{ net.Conn }

var errNoEventLoops = errors.New("event loops need Linux (epoll)")

func newEventLoop(Metrics, time.Duration) (*eventLoop, error) { return nil, errNoEventLoops }

func defaultBusyPoll() (time.Duration, string) { return 0, "" }

func (l *eventLoop) beforeBlock() {}

func (l *eventLoop) stop() {}

func detachConns(*eventLoop, ...net.Conn) ([]*loopConn, error) { return nil, errNoEventLoops }

func (p *pump) runOnLoop(*eventLoop, *loopConn, loopLane) error { return errNoEventLoops }
