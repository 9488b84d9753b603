package config

import (
	"strconv"

	"go.yaml.in/yaml/v3"
)

// source remembers where a configuration came from, so findings can name file and line.
type source struct {
	path string
	root *yaml.Node // the document's top mapping; nil for a configuration built in code
}

// line returns the line of the value at path (map keys as strings, sequence indexes as ints), or
// of the nearest enclosing node that exists; for a map key it is the key's own line.
func (s *source) line(path ...any) int {
	if s == nil || s.root == nil {
		return 0
	}
	node, line := s.root, s.root.Line
	for _, step := range path {
		switch step := step.(type) {
		case string:
			if node.Kind != yaml.MappingNode {
				return line
			}
			found := false
			for i := 0; i+1 < len(node.Content); i += 2 {
				if node.Content[i].Value == step {
					line = node.Content[i].Line
					node = node.Content[i+1]
					found = true
					break
				}
			}
			if !found {
				return line
			}
		case int:
			if node.Kind != yaml.SequenceNode || step >= len(node.Content) {
				return line
			}
			node = node.Content[step]
			line = node.Line
		default:
			panic("config: path step " + strconv.Quote(stringOf(step)))
		}
	}
	return line
}

func stringOf(v any) string {
	if s, ok := v.(string); ok {
		return s
	}
	return "?"
}
