package e2e

import "testing"

func TestSmoke(t *testing.T) {
	p := startProxy(t, proxyOpts{})
	conn := p.connect(t)
	var n int
	if err := conn.QueryRow(testCtx(t), "select $1::int + 1", 41).Scan(&n); err != nil || n != 42 {
		t.Fatalf("got %d, %v", n, err)
	}
}
