package sim

import (
	"encoding/json"
	"fmt"
	"strings"

	yamlv2 "gopkg.in/yaml.v2"
)

// Output formats of Juju's hook tools (testdata/fixtures/INDEX.md "Formatter
// rules"; juju/juju: cmd/output.go): json is json.Marshal plus a newline, yaml is yaml.v2 and
// prints nothing for nil, smart prints strings raw, lists one per line,
// bools as True/False and anything else as YAML.
func formatValue(format string, v any) ([]byte, error) {
	switch format {
	case "json":
		data, err := json.Marshal(v)
		if err != nil {
			return nil, err
		}
		return append(data, '\n'), nil
	case "yaml":
		if v == nil {
			return nil, nil
		}
		data, err := yamlv2.Marshal(v)
		if err != nil {
			return nil, err
		}
		return []byte(strings.TrimRight(string(data), "\n") + "\n"), nil
	default:
		switch x := v.(type) {
		case nil:
			return nil, nil
		case string:
			if x == "" {
				return nil, nil
			}
			return []byte(x + "\n"), nil
		case []string:
			if len(x) == 0 {
				return nil, nil
			}
			return []byte(strings.Join(x, "\n") + "\n"), nil
		case bool:
			if x {
				return []byte("True\n"), nil
			}
			return []byte("False\n"), nil
		}
		return formatValue("yaml", v)
	}
}

type flagDef struct {
	names []string // names[0] is the key in the parsed map
	value bool     // takes a value
}

// usageError is a flag or argument error: Juju exits 2 for these.
type usageError struct{ msg string }

func (e usageError) Error() string { return e.msg }

// parseArgs parses gnuflag-style arguments: flags may come after positional
// arguments, "--" ends the flags, "--flag=value" and "--flag value" both work.
func parseArgs(args []string, defs ...flagDef) (map[string]string, []string, error) {
	defs = append(defs, flagDef{names: []string{"format"}, value: true})
	vals := map[string]string{}
	var pos []string
	for i := 0; i < len(args); i++ {
		a := args[i]
		if a == "--" {
			pos = append(pos, args[i+1:]...)
			break
		}
		if len(a) < 2 || a[0] != '-' {
			pos = append(pos, a)
			continue
		}
		name := strings.TrimLeft(a, "-")
		val, hasVal := "", false
		if n, v, ok := strings.Cut(name, "="); ok {
			name, val, hasVal = n, v, true
		}
		var def *flagDef
		for j := range defs {
			for _, n := range defs[j].names {
				if n == name {
					def = &defs[j]
				}
			}
		}
		if def == nil {
			return nil, nil, usageError{fmt.Sprintf("flag provided but not defined: %s", strings.SplitN(a, "=", 2)[0])}
		}
		if def.value && !hasVal {
			if i+1 >= len(args) {
				return nil, nil, usageError{fmt.Sprintf("flag needs an argument: %s", a)}
			}
			i++
			val = args[i]
		}
		if !def.value && !hasVal {
			val = "true"
		}
		vals[def.names[0]] = val
	}
	if f, ok := vals["format"]; ok && f != "json" && f != "yaml" && f != "smart" {
		return nil, nil, usageError{fmt.Sprintf("invalid value %q for option --format: unknown format %q", f, f)}
	}
	return vals, pos, nil
}

func isTrue(v string) bool {
	switch strings.ToLower(v) {
	case "true", "1", "t", "yes":
		return true
	}
	return false
}
