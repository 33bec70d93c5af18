package dockerchaos

import (
	"strings"
	"testing"
)

func TestParseLedger(t *testing.T) {
	got, err := ParseLedger("t1 1 w-a\n\nt2 2 w-b\n")
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 2 || got[0].TaskID != "t1" || got[0].Attempt != 1 || got[0].Worker != "w-a" || got[1].Attempt != 2 {
		t.Fatalf("ParseLedger = %+v", got)
	}
	for _, bad := range []string{"t1 1\n", "t1 x w\n", "t1 1 w extra\n"} {
		if _, err := ParseLedger(bad); err == nil {
			t.Errorf("ParseLedger(%q) accepted a malformed line", bad)
		}
	}
}

func TestNemesesKnowsEveryFault(t *testing.T) {
	tg := New("p", "img", []int{1, 2, 3})
	ns, err := Nemeses(tg, FaultNames)
	if err != nil {
		t.Fatal(err)
	}
	for i, n := range ns {
		if n.Name() != FaultNames[i] {
			t.Errorf("fault %d is named %q, want %q", i, n.Name(), FaultNames[i])
		}
	}
	if _, err := Nemeses(tg, []string{"kill-leader", "set-fire"}); err == nil || !strings.Contains(err.Error(), "set-fire") {
		t.Errorf("an unknown fault gives %v, want an error naming it", err)
	}
}

func TestTargetNames(t *testing.T) {
	tg := New("chaos", "img", []int{18081, 18082, 18083})
	if got := tg.Container("m2"); got != "chaos-master-2" {
		t.Errorf("Container(m2) = %q", got)
	}
	if got := tg.Alias("m3"); got != "master-3" {
		t.Errorf("Alias(m3) = %q", got)
	}
	if got := tg.Masters()["m1"]; got != "http://127.0.0.1:18081" {
		t.Errorf("Masters()[m1] = %q", got)
	}
	spec := tg.TaskSpec("k")
	if len(spec.Args) != 3 || !strings.Contains(spec.Args[2], LedgerFile) || !strings.Contains(spec.Args[2], "$GANTRY_ATTEMPT") {
		t.Errorf("TaskSpec does not append to the ledger: %q", spec.Args)
	}
}
