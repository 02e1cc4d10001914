// Package argocd runs Argo CD resource health checks (health.lua) with
// gopher-lua, the interpreter Argo CD embeds, the way Argo CD runs them: the
// object is decoded into the global `obj`, the script runs with a one-second
// limit, and the table it returns is the health status.
package argocd

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"time"

	lua "github.com/yuin/gopher-lua"
)

// HealthStatus is Argo CD's health.HealthStatus: what a health.lua returns.
type HealthStatus struct {
	Status  string `json:"status"`
	Message string `json:"message,omitempty"`
}

// healthCodes are the statuses Argo CD accepts from a script; anything
// else it reports as Unknown, "Lua returned an invalid health status".
var healthCodes = map[string]bool{
	"Healthy": true, "Progressing": true, "Degraded": true, "Suspended": true, "Missing": true, "Unknown": true,
}

// RunHealthLua runs a health script on an object the way Argo CD does.
// openLibs is what Argo CD's test harness uses; without it, only the
// libraries Argo CD opens for argocd-cm customizations by default (base,
// table, package) are there.
func RunHealthLua(script string, obj map[string]any, openLibs bool) (HealthStatus, error) {
	l := lua.NewState(lua.Options{SkipOpenLibs: !openLibs})
	defer l.Close()
	if !openLibs {
		for _, lib := range []struct {
			name string
			open lua.LGFunction
		}{{lua.LoadLibName, lua.OpenPackage}, {lua.BaseLibName, lua.OpenBase}, {lua.TabLibName, lua.OpenTable}} {
			if err := l.CallByParam(lua.P{Fn: l.NewFunction(lib.open), NRet: 0, Protect: true}, lua.LString(lib.name)); err != nil {
				return HealthStatus{}, fmt.Errorf("opening Lua library %s: %w", lib.name, err)
			}
		}
	}
	// Argo CD stops a health script after a second.
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	l.SetContext(ctx)
	l.SetGlobal("obj", toLua(l, obj))
	if err := l.DoString(script); err != nil {
		return HealthStatus{}, fmt.Errorf("running health.lua: %w", err)
	}
	table, ok := l.Get(-1).(*lua.LTable)
	if !ok {
		return HealthStatus{}, fmt.Errorf("health.lua returned %s, want a table", l.Get(-1).Type())
	}
	var hs HealthStatus
	for field, dst := range map[string]*string{"status": &hs.Status, "message": &hs.Message} {
		switch v := table.RawGetString(field).(type) {
		case lua.LString:
			*dst = string(v)
		case *lua.LNilType:
		default:
			return HealthStatus{}, fmt.Errorf("health.lua returned %s of type %s, want a string", field, v.Type())
		}
	}
	if !healthCodes[hs.Status] {
		return HealthStatus{}, fmt.Errorf("health.lua returned status %q, which Argo CD reports as an invalid health status", hs.Status)
	}
	return hs, nil
}

// toLua converts a decoded JSON/YAML value into Lua values as Argo CD does:
// maps become tables with string keys, slices become arrays, numbers (int64
// from the API server, float64 from YAML) become numbers.
func toLua(l *lua.LState, v any) lua.LValue {
	switch v := v.(type) {
	case nil:
		return lua.LNil
	case bool:
		return lua.LBool(v)
	case string:
		return lua.LString(v)
	case json.Number:
		return lua.LString(v)
	case float64:
		return lua.LNumber(v)
	case int64:
		return lua.LNumber(v)
	case int:
		return lua.LNumber(v)
	case int32:
		return lua.LNumber(v)
	case []any:
		t := l.CreateTable(len(v), 0)
		for _, item := range v {
			t.Append(toLua(l, item))
		}
		return t
	case map[string]any:
		t := l.CreateTable(0, len(v))
		for k, item := range v {
			t.RawSetString(k, toLua(l, item))
		}
		return t
	}
	return lua.LNil
}

// ReadScript returns the health.lua of a kind from a resource_customizations
// directory, e.g. ReadScript(dir, "ml.modelguard.dev", "ProtectedModel").
func ReadScript(customizations, group, kind string) (string, error) {
	data, err := os.ReadFile(filepath.Join(customizations, group, kind, "health.lua"))
	if err != nil {
		return "", fmt.Errorf("reading the %s/%s health check: %w", group, kind, err)
	}
	return string(data), nil
}
