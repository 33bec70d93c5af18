package master

import (
	"reflect"
	"testing"
)

func TestWorkerNames_MatchesContainersByNameOrID(t *testing.T) {
	const (
		idA = "3f2a9c1d7b4e5a6f8091a2b3c4d5e6f708192a3b4c5d6e7f8091a2b3c4d5e6f7"
		idB = "3f2a9c1d7b4e11112222333344445555666677778888999900001111aaaabbbb"
		idC = "9e8d7c6b5a4f3e2d1c0b9a8f7e6d5c4b3a2f1e0d9c8b7a6f5e4d3c2b1a0f9e8d"
	)
	containers := []Container{
		{Name: "gantry_worker_1", ID: idA, State: "running"},
		{Name: "gantry_worker_2", ID: idB, State: "running"},
		{Name: "gantry-managed-1", ID: idC, State: "running"},
	}
	for _, tt := range []struct {
		name string
		ids  []string
		want map[string]string
	}{
		{"short ID (a compose worker's host name)", []string{idC[:12]}, map[string]string{idC[:12]: "gantry-managed-1"}},
		{"full ID", []string{idA}, map[string]string{idA: "gantry_worker_1"}},
		{"container name (a managed worker)", []string{"gantry-managed-1"}, map[string]string{"gantry-managed-1": "gantry-managed-1"}},
		{"prefix of two containers is ambiguous", []string{idA[:12]}, map[string]string{}},
		{"longer prefix is not", []string{idA[:16]}, map[string]string{idA[:16]: "gantry_worker_1"}},
		{"prefix shorter than a short ID", []string{idC[:6]}, map[string]string{}},
		{"no container", []string{"w1", ""}, map[string]string{}},
		{"several at once", []string{idC[:12], idB[:16], "w1"}, map[string]string{idC[:12]: "gantry-managed-1", idB[:16]: "gantry_worker_2"}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			if got := workerNames(tt.ids, containers); !reflect.DeepEqual(got, tt.want) {
				t.Errorf("workerNames(%q) = %v, want %v", tt.ids, got, tt.want)
			}
		})
	}
	if got := workerNames([]string{idA}, nil); len(got) != 0 {
		t.Errorf("without containers: %v, want no names", got)
	}
}
