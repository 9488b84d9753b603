//go:build linux

package proxy

import (
	"os"
	"path/filepath"
	"testing"
)

func TestCPUQuotaFile(t *testing.T) {
	cases := []struct {
		name   string
		cgroup string            // /proc/self/cgroup
		files  map[string]string // under sys/fs/cgroup
		want   string            // under sys/fs/cgroup, "" for no quota
	}{
		{
			name:   "v2 quota on the process's cgroup",
			cgroup: "0::/kubepods/pod1/c1\n",
			files:  map[string]string{"kubepods/pod1/c1/cpu.max": "50000 100000\n", "kubepods/cpu.max": "max 100000\n"},
			want:   "kubepods/pod1/c1/cpu.max",
		},
		{
			name:   "v2 quota on a parent",
			cgroup: "0::/kubepods/pod1/c1\n",
			files:  map[string]string{"kubepods/pod1/c1/cpu.max": "max 100000\n", "kubepods/pod1/cpu.max": "200000 100000\n"},
			want:   "kubepods/pod1/cpu.max",
		},
		{
			name:   "v2 without a quota",
			cgroup: "0::/user.slice/session-1.scope\n",
			files:  map[string]string{"user.slice/session-1.scope/cpu.max": "max 100000\n", "user.slice/cpu.max": "max 100000\n"},
		},
		{
			name:   "v2 in a cgroup namespace: the root is the container's cgroup",
			cgroup: "0::/\n",
			files:  map[string]string{"cpu.max": "100000 100000\n"},
			want:   "cpu.max",
		},
		{
			name:   "v1 cpu,cpuacct",
			cgroup: "11:memory:/docker/abc\n4:cpu,cpuacct:/docker/abc\n0::/\n",
			files:  map[string]string{"cpu,cpuacct/docker/abc/cpu.cfs_quota_us": "150000\n"},
			want:   "cpu,cpuacct/docker/abc/cpu.cfs_quota_us",
		},
		{
			name:   "v1 container seeing the host's path: its cgroup is the mount",
			cgroup: "4:cpu,cpuacct:/docker/abc\n",
			files:  map[string]string{"cpu/cpu.cfs_quota_us": "100000\n"},
			want:   "cpu/cpu.cfs_quota_us",
		},
		{
			name:   "v1 without a quota",
			cgroup: "1:cpu:/\n0::/\n",
			files:  map[string]string{"cpu/cpu.cfs_quota_us": "-1\n"},
		},
		{
			name:   "a controller whose name starts with cpu is not cpu",
			cgroup: "3:cpuset:/\n",
			files:  map[string]string{"cpuset/cpu.cfs_quota_us": "100000\n"},
		},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			root := t.TempDir()
			writeFile(t, filepath.Join(root, "proc/self/cgroup"), tc.cgroup)
			for name, content := range tc.files {
				writeFile(t, filepath.Join(root, "sys/fs/cgroup", name), content)
			}
			want := ""
			if tc.want != "" {
				want = filepath.Join(root, "sys/fs/cgroup", tc.want)
			}
			if got := cpuQuotaFile(root); got != want {
				t.Fatalf("cpuQuotaFile = %q, want %q", got, want)
			}
		})
	}
	if got := cpuQuotaFile(t.TempDir()); got != "" {
		t.Fatalf("without /proc/self/cgroup: %q, want none", got)
	}
}

func writeFile(t *testing.T, path, content string) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
}
