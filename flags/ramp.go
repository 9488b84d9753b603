package flags

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
)

// SetPercent sets a numeric flag's value in a flagd flag file: the flag's default variant becomes
// one whose value is percent (an existing variant with that value, or a new "p<percent>" one).
// Every other flag, variant and targeting rule is kept. The file is replaced atomically (a
// temporary file renamed over it), so a watcher never sees half a file. It returns the value the
// default variant had before.
func SetPercent(path, flag string, percent float64) (float64, error) {
	if percent < 0 || percent > 100 {
		return 0, fmt.Errorf("percentage %v is outside 0-100", percent)
	}
	raw, err := os.ReadFile(path)
	if err != nil {
		return 0, fmt.Errorf("read flag file: %w", err)
	}
	var top map[string]json.RawMessage
	if err := json.Unmarshal(raw, &top); err != nil {
		return 0, fmt.Errorf("flag file %s: %w", path, err)
	}
	var all map[string]json.RawMessage
	if err := json.Unmarshal(top["flags"], &all); err != nil || all == nil {
		return 0, fmt.Errorf("flag file %s: no \"flags\" object", path)
	}
	var def struct {
		State          string             `json:"state"`
		Variants       map[string]float64 `json:"variants"`
		DefaultVariant string             `json:"defaultVariant"`
	}
	var fields map[string]json.RawMessage
	if rawFlag, ok := all[flag]; !ok {
		fields = map[string]json.RawMessage{} // a new flag
		def.State = "ENABLED"
	} else {
		if err := json.Unmarshal(rawFlag, &fields); err != nil {
			return 0, fmt.Errorf("flag %s in %s: %w", flag, path, err)
		}
		if err := json.Unmarshal(rawFlag, &def); err != nil {
			return 0, fmt.Errorf("flag %s in %s is not numeric: %w", flag, path, err)
		}
	}
	old := def.Variants[def.DefaultVariant]
	if def.Variants == nil {
		def.Variants = map[string]float64{}
	}
	chosen := ""
	for name, v := range def.Variants {
		if v == percent && (chosen == "" || name < chosen) {
			chosen = name
		}
	}
	if chosen == "" {
		chosen = "p" + strconv.FormatFloat(percent, 'f', -1, 64)
		def.Variants[chosen] = percent
	}
	set := func(key string, v any) error {
		b, err := json.Marshal(v)
		fields[key] = b
		return err
	}
	if err := set("variants", def.Variants); err != nil {
		return 0, err
	}
	if err := set("defaultVariant", chosen); err != nil {
		return 0, err
	}
	if def.State == "" || fields["state"] == nil {
		_ = set("state", "ENABLED")
	}
	if all[flag], err = json.Marshal(fields); err != nil {
		return 0, err
	}
	if top["flags"], err = json.Marshal(all); err != nil {
		return 0, err
	}
	out, err := json.Marshal(top)
	if err != nil {
		return 0, err
	}
	var pretty bytes.Buffer
	if err := json.Indent(&pretty, out, "", "  "); err != nil {
		return 0, err
	}
	pretty.WriteByte('\n')
	tmp, err := os.CreateTemp(filepath.Dir(path), ".flags-*.json")
	if err != nil {
		return 0, fmt.Errorf("write flag file: %w", err)
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.Write(pretty.Bytes()); err != nil {
		tmp.Close()
		return 0, fmt.Errorf("write flag file: %w", err)
	}
	if err := tmp.Close(); err != nil {
		return 0, fmt.Errorf("write flag file: %w", err)
	}
	if info, err := os.Stat(path); err == nil {
		_ = os.Chmod(tmp.Name(), info.Mode().Perm())
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return 0, fmt.Errorf("replace flag file: %w", err)
	}
	return old, nil
}

// DefaultValue reads the value of a numeric flag's default variant from a flag file: what a key
// without a targeting match gets.
func DefaultValue(path, flag string) (float64, error) {
	raw, err := os.ReadFile(path)
	if err != nil {
		return 0, fmt.Errorf("read flag file: %w", err)
	}
	var doc struct {
		Flags map[string]struct {
			Variants       map[string]float64 `json:"variants"`
			DefaultVariant string             `json:"defaultVariant"`
		} `json:"flags"`
	}
	if err := json.Unmarshal(raw, &doc); err != nil {
		return 0, fmt.Errorf("flag file %s: %w", path, err)
	}
	f, ok := doc.Flags[flag]
	if !ok {
		return 0, fmt.Errorf("flag %s not in %s", flag, path)
	}
	v, ok := f.Variants[f.DefaultVariant]
	if !ok {
		return 0, fmt.Errorf("flag %s in %s: default variant %q has no numeric value", flag, path, f.DefaultVariant)
	}
	return v, nil
}
