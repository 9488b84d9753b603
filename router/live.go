package router

import (
	"sync/atomic"

	"github.com/pgcanary/pgcanary/config"
)

// Live plans against whatever configuration generation is current: it rebuilds the planner's
// catalog once per generation, so statements planned after a reload use the new one.
type Live struct {
	store   *config.Store
	planner *Planner
	cat     atomic.Pointer[Catalog]
}

// NewLive plans with planner against the generations in store.
func NewLive(store *config.Store, planner *Planner) *Live {
	return &Live{store: store, planner: planner}
}

// Plan plans sql for a session, or returns nil when the current generation configures no
// migration (the proxy then relays everything untouched).
func (l *Live) Plan(searchPath, user, sql string) *Plan {
	gen := l.store.Current()
	if gen == nil || len(gen.Catalog) == 0 {
		return nil
	}
	cat := l.cat.Load()
	if cat == nil || cat.Generation != gen.Number {
		cat = NewCatalog(gen)
		l.cat.Store(cat)
	}
	return l.planner.Plan(cat, searchPath, user, sql)
}

// Active reports whether the current generation configures a migration.
func (l *Live) Active() bool {
	gen := l.store.Current()
	return gen != nil && len(gen.Catalog) > 0
}
