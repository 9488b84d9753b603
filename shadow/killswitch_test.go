package shadow

import (
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"
)

func TestKillSwitch(t *testing.T) {
	clock := newFakeClock()
	m := newCountMetrics()
	ks, err := NewKillSwitch(KillSwitchOptions{Metrics: m, Now: clock.Now})
	if err != nil {
		t.Fatal(err)
	}
	if on, _, _ := ks.Engaged("a"); on {
		t.Fatal("engaged at start")
	}
	ks.Engage("a", "canary failed")
	since0 := clock.Now()
	clock.Advance(time.Minute)
	ks.Engage("a", "again") // keeps the first reason and time
	on, reason, since := ks.Engaged("a")
	if !on || reason != "canary failed" || !since.Equal(since0) {
		t.Errorf("Engaged(a) = %v, %q, %v; want true, first reason, %v", on, reason, since, since0)
	}
	if on, _, _ := ks.Engaged("b"); on {
		t.Error("b engaged")
	}
	if m.gauge("kill/a") != "true" {
		t.Errorf("gauge %q, want true", m.gauge("kill/a"))
	}
	ks.Release("a")
	if on, _, _ := ks.Engaged("a"); on || m.gauge("kill/a") != "false" {
		t.Errorf("still engaged after Release (gauge %q)", m.gauge("kill/a"))
	}
	ks.Release("a") // releasing a released switch is fine
}

func TestKillSwitchConcurrent(t *testing.T) {
	ks, err := NewKillSwitch(KillSwitchOptions{})
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	stop := make(chan struct{})
	for range 8 {
		wg.Go(func() {
			for {
				select {
				case <-stop:
					return
				default:
					ks.Engaged("m")
				}
			}
		})
	}
	for range 200 {
		ks.Engage("m", "x")
		ks.Release("m")
	}
	close(stop)
	wg.Wait()
}

func TestKillSwitchPersists(t *testing.T) {
	path := filepath.Join(t.TempDir(), "killswitch.json")
	ks, err := NewKillSwitch(KillSwitchOptions{StatePath: path})
	if err != nil {
		t.Fatal(err)
	}
	ks.Engage("a", "canary failed: mismatches")
	ks.Engage("b", "operator")
	ks.Release("b")
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Errorf("state file mode %v, want 0600", fi.Mode().Perm())
	}

	m := newCountMetrics()
	restarted, err := NewKillSwitch(KillSwitchOptions{StatePath: path, Metrics: m})
	if err != nil {
		t.Fatal(err)
	}
	if on, reason, _ := restarted.Engaged("a"); !on || reason != "canary failed: mismatches" {
		t.Errorf("after restart: a engaged %v (%q), want engaged", on, reason)
	}
	if on, _, _ := restarted.Engaged("b"); on {
		t.Error("after restart: released b engaged")
	}
	if m.gauge("kill/a") != "true" {
		t.Error("gauge not set for a switch loaded from the state file")
	}
	if len(restarted.All()) != 1 {
		t.Errorf("All() = %v", restarted.All())
	}
	// No temporary files are left behind.
	entries, _ := os.ReadDir(filepath.Dir(path))
	if len(entries) != 1 {
		t.Errorf("state directory holds %d entries, want only the state file", len(entries))
	}
}

func TestKillSwitchCorruptState(t *testing.T) {
	path := filepath.Join(t.TempDir(), "killswitch.json")
	if err := os.WriteFile(path, []byte("{not json"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := NewKillSwitch(KillSwitchOptions{StatePath: path}); err == nil {
		t.Error("a corrupt state file was accepted (it would silently release switches)")
	}
}

func TestKillSwitchUnwritableState(t *testing.T) {
	path := filepath.Join(t.TempDir(), "missing-dir", "killswitch.json")
	ks, err := NewKillSwitch(KillSwitchOptions{StatePath: path})
	if err != nil {
		t.Fatal(err)
	}
	ks.Engage("a", "x") // cannot be saved; holds in memory all the same
	if on, _, _ := ks.Engaged("a"); !on {
		t.Error("not engaged when the state file cannot be written")
	}
}
