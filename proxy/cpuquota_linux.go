//go:build linux

package proxy

import (
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
)

// cpuQuotaFile returns the cgroup file that puts the process under a CPU quota (cgroup v2
// cpu.max, or v1 cpu.cfs_quota_us, in its own cgroup or one above it), or "" when there is none.
// root is "/" except in tests.
//
// Busy polling spends CPU time nothing else wants, which a quota counts all the same: a proxy
// polling through its quota would be throttled for the rest of each period, the opposite of
// answering sooner. So the default busy poll is off under a quota (defaultBusyPoll).
func cpuQuotaFile(root string) string {
	raw, err := os.ReadFile(filepath.Join(root, "proc/self/cgroup"))
	if err != nil {
		return ""
	}
	for line := range strings.Lines(string(raw)) {
		// id:controllers:path; cgroup v2 is "0::/path".
		parts := strings.SplitN(strings.TrimSpace(line), ":", 3)
		if len(parts) != 3 {
			continue
		}
		controllers, path := parts[1], parts[2]
		if parts[0] == "0" && controllers == "" {
			if f := quotaUp(filepath.Join(root, "sys/fs/cgroup"), path, "cpu.max", limitedV2); f != "" {
				return f
			}
			continue
		}
		if !slices.Contains(strings.Split(controllers, ","), "cpu") {
			continue
		}
		// The hierarchy is mounted under its controllers' names ("cpu,cpuacct"), often with a
		// "cpu" link to it.
		mounts := []string{controllers}
		if controllers != "cpu" {
			mounts = append(mounts, "cpu")
		}
		for _, mount := range mounts {
			if f := quotaUp(filepath.Join(root, "sys/fs/cgroup", mount), path, "cpu.cfs_quota_us", limitedV1); f != "" {
				return f
			}
		}
	}
	return ""
}

// quotaUp looks for a quota in name from the cgroup's directory up to the hierarchy's mount. A
// container that sees its host's cgroup path, without that path under its mount, finds its own
// cgroup at the mount itself.
func quotaUp(mount, path, name string, limited func(string) bool) string {
	for dir := filepath.Join(mount, path); ; dir = filepath.Dir(dir) {
		f := filepath.Join(dir, name)
		if raw, err := os.ReadFile(f); err == nil && limited(strings.TrimSpace(string(raw))) {
			return f
		}
		if len(dir) <= len(mount) {
			return ""
		}
	}
}

// limitedV2: cpu.max is "QUOTA PERIOD", QUOTA "max" for none.
func limitedV2(v string) bool {
	quota, _, _ := strings.Cut(v, " ")
	return quota != "" && quota != "max"
}

// limitedV1: cpu.cfs_quota_us is -1 for none.
func limitedV1(v string) bool {
	n, err := strconv.ParseInt(v, 10, 64)
	return err == nil && n > 0
}
