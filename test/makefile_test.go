package test

// Checks of the Makefile and the docs that need no Docker: `make -n` shows
// which image a target builds, and a lint keeps the README's and docs/'s
// shell examples honest (issue 10, points 7 and 8).

import (
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"strings"
	"testing"
)

// mkRepoRoot returns the repository root: the parent of this file's directory.
func mkRepoRoot(t *testing.T) string {
	t.Helper()
	_, file, _, ok := runtime.Caller(0)
	if !ok {
		t.Fatal("runtime.Caller: no file")
	}
	return filepath.Dir(filepath.Dir(file))
}

// mkDryRun runs `make -n args...` in the repository root and returns what it
// prints. The environment loses IMAGE, GANTRY_* and the variables of an outer
// make, so the Makefile's defaults apply; GO=true keeps a Makefile that runs a
// recipe line despite -n (one that calls $(MAKE)) from starting a real test.
func mkDryRun(t *testing.T, args ...string) string {
	t.Helper()
	if _, err := exec.LookPath("make"); err != nil {
		t.Skip("make is not installed")
	}
	var env []string
	for _, kv := range os.Environ() {
		name, _, _ := strings.Cut(kv, "=")
		switch {
		case strings.HasPrefix(name, "GANTRY_"), name == "IMAGE",
			name == "MAKEFLAGS", name == "MFLAGS", name == "MAKELEVEL", name == "MAKEFILES":
			continue
		}
		env = append(env, kv)
	}
	cmd := exec.Command("make", append([]string{"-n", "--no-print-directory", "GO=true"}, args...)...)
	cmd.Dir = mkRepoRoot(t)
	cmd.Env = env
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("make -n %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

// mkDockerBuild matches a `docker build` command line and captures its tag.
var mkDockerBuild = regexp.MustCompile(`(?m)^\s*docker\s+build\b.*?-t\s+(\S+)`)

// mkImageTargets are the targets that run an image and so must never build
// under a user's tag.
var mkImageTargets = []string{"up", "e2e", "chaos", "chaos-ci", "bench-docker"}

func TestMakefile_UserImageIsNeverBuilt(t *testing.T) {
	const user = "someone-else:1"
	for _, target := range mkImageTargets {
		t.Run(target, func(t *testing.T) {
			out := mkDryRun(t, target, "IMAGE="+user)
			if m := mkDockerBuild.FindAllString(out, -1); len(m) > 0 {
				t.Errorf("make -n %s IMAGE=%s builds an image, it must use %s as it is:\n%s\n--- full output:\n%s",
					target, user, user, strings.Join(m, "\n"), out)
			}
			for _, want := range []string{
				"using the image " + user + " as it is (not rebuilt)",
				"docker image inspect " + user,
				"image " + user + " does not exist; build it first, or leave IMAGE unset to build gantry:dev",
				"GANTRY_IMAGE=" + user,
			} {
				if !strings.Contains(out, want) {
					t.Errorf("make -n %s IMAGE=%s does not show %q:\n%s", target, user, want, out)
				}
			}
		})
	}
}

func TestMakefile_DefaultImageIsBuilt(t *testing.T) {
	for _, target := range mkImageTargets {
		t.Run(target, func(t *testing.T) {
			out := mkDryRun(t, target)
			m := mkDockerBuild.FindAllStringSubmatch(out, -1)
			if len(m) != 1 || m[0][1] != "gantry:dev" {
				t.Errorf("make -n %s must build gantry:dev exactly once, got %q:\n%s", target, m, out)
			}
			if strings.Contains(out, "not rebuilt") {
				t.Errorf("make -n %s treats gantry:dev as a user image:\n%s", target, out)
			}
		})
	}
}

// The image target exists to build: an explicit IMAGE is built under that tag.
func TestMakefile_ImageTargetBuildsExplicitTag(t *testing.T) {
	out := mkDryRun(t, "image", "IMAGE=someone-else:1")
	m := mkDockerBuild.FindAllStringSubmatch(out, -1)
	if len(m) != 1 || m[0][1] != "someone-else:1" {
		t.Errorf("make -n image IMAGE=someone-else:1 must build that tag, got %q:\n%s", m, out)
	}
}

func TestMakefile_HelpListsTheTargets(t *testing.T) {
	if _, err := exec.LookPath("make"); err != nil {
		t.Skip("make is not installed")
	}
	cmd := exec.Command("make", "--no-print-directory", "help")
	cmd.Dir = mkRepoRoot(t)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("make help: %v\n%s", err, out)
	}
	for _, target := range append([]string{"image", "down"}, mkImageTargets...) {
		re := regexp.MustCompile(`(?m)^  ` + regexp.QuoteMeta(target) + `\s+\S`)
		if !re.MatchString(string(out)) {
			t.Errorf("make help has no description of %s:\n%s", target, out)
		}
	}
}

// readmeDocs returns README.md and docs/*.md, path relative to the root -> text.
func readmeDocs(t *testing.T) map[string]string {
	t.Helper()
	root := mkRepoRoot(t)
	paths, err := filepath.Glob(filepath.Join(root, "docs", "*.md"))
	if err != nil {
		t.Fatal(err)
	}
	paths = append([]string{filepath.Join(root, "README.md")}, paths...)
	docs := make(map[string]string, len(paths))
	for _, p := range paths {
		b, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		rel, _ := filepath.Rel(root, p)
		docs[rel] = string(b)
	}
	return docs
}

// readmeCurlCall finds a curl command: the word curl followed by arguments,
// at a line's start or after a shell separator, backtick or `(`.
var readmeCurlCall = regexp.MustCompile("(?:^|[\\s;&|(`$])curl[ \\t]+([^;&|`)\\n]*)")

// readmeCurlArgTakers are curl's short options that take an argument: in a
// cluster such as -XPOST, what follows one of them is its value.
const readmeCurlArgTakers = "XHdoOuwAebcFTmrxyYzKECDUQtP"

// readmeCurlSilent reports whether curl's arguments include -s (alone or in a
// cluster: -sS, -fsS, -si) or --silent.
func readmeCurlSilent(args string) bool {
	for _, a := range strings.Fields(args) {
		if a == "--silent" {
			return true
		}
		if len(a) < 2 || a[0] != '-' || a[1] == '-' {
			continue
		}
		for _, c := range a[1:] {
			if c == 's' {
				return true
			}
			if strings.ContainsRune(readmeCurlArgTakers, c) {
				break
			}
		}
	}
	return false
}

func TestReadme_CurlExamplesAreSilent(t *testing.T) {
	// The checker itself, on lines the issue named and their fixes.
	for line, silent := range map[string]bool{
		`curl -XPOST localhost:8083/v1/tasks -d '{"args":["echo","hi"]}'`:    false,
		`curl -s -XPOST localhost:8083/v1/tasks -d '{"args":["echo","hi"]}'`: true,
		`curl -fsS localhost:8081/v1/cluster`:                                true,
		`curl -si -XPOST localhost:8083/v1/tasks`:                            true,
		`curl -XPOST -H 'Idempotency-Key: s' localhost:8081/v1/tasks`:        false,
	} {
		m := readmeCurlCall.FindStringSubmatch(line)
		if m == nil || readmeCurlSilent(m[1]) != silent {
			t.Fatalf("the lint misjudges %q (match %q, want silent=%v)", line, m, silent)
		}
	}
	checked := 0
	for path, text := range readmeDocs(t) {
		for i, line := range strings.Split(text, "\n") {
			for _, m := range readmeCurlCall.FindAllStringSubmatch(line, -1) {
				args := strings.TrimSpace(m[1])
				if args == "" || !strings.HasPrefix(args, "-") && !strings.Contains(args, "localhost") && !strings.Contains(args, "://") {
					continue // prose ("curl, any HTTP client"), not a command
				}
				checked++
				if !readmeCurlSilent(args) {
					t.Errorf("%s:%d: curl without -s prints a progress meter: %s", path, i+1, strings.TrimSpace(line))
				}
			}
		}
	}
	if checked == 0 {
		t.Fatal("no curl example found: the lint checks nothing")
	}
}

func TestReadme_MakeDownKeepsVolumes(t *testing.T) {
	docs := readmeDocs(t)
	for _, path := range []string{"README.md", filepath.Join("docs", "DOCKER.md")} {
		for i, line := range strings.Split(docs[path], "\n") {
			l := strings.ToLower(line)
			if strings.Contains(l, "make down") && strings.Contains(l, "everything") {
				t.Errorf("%s:%d: make down keeps the Raft volumes, it does not remove everything: %s",
					path, i+1, strings.TrimSpace(line))
			}
		}
	}
	readme := docs["README.md"]
	start := strings.Index(readme, "## Quick start")
	end := strings.Index(readme, "### The compose set")
	if start < 0 || end < start {
		t.Fatal("README.md: no Quick start section")
	}
	quick := readme[start:end]
	var down string
	for _, line := range strings.Split(quick, "\n") {
		if strings.HasPrefix(line, "make down ") {
			down = line
		}
	}
	i := strings.Index(quick, down)
	if down == "" || !strings.Contains(quick[i:], "kept") || !strings.Contains(quick[i:], "make down VOLUMES=1") {
		t.Errorf("README.md quick start: the make down line must say the Raft volumes are kept and make down VOLUMES=1 deletes them:\n%s", quick)
	}
}

// readmeHeading matches a Markdown section heading (not a shell comment).
var readmeHeading = regexp.MustCompile(`(?m)^#{2,} \S`)

// readmeFixedMaster matches a pause or unpause of a hard-coded master.
var readmeFixedMaster = regexp.MustCompile(`docker (?:un)?pause \S*master-[0-9]`)

func TestReadme_PauseFindsTheLeaderFirst(t *testing.T) {
	docs := readmeDocs(t)
	for _, path := range []string{"README.md", filepath.Join("docs", "DOCKER.md")} {
		text := docs[path]
		for i, line := range strings.Split(text, "\n") {
			if readmeFixedMaster.MatchString(line) {
				t.Errorf("%s:%d: any master may lead; pause the leader found first, not a fixed master: %s",
					path, i+1, strings.TrimSpace(line))
			}
		}
		pause := strings.Index(text, "docker pause ")
		if pause < 0 {
			t.Errorf("%s: no docker pause example", path)
			continue
		}
		// The section up to the first pause must look the leader up.
		section := text[:pause]
		if h := readmeHeading.FindAllStringIndex(section, -1); len(h) > 0 {
			section = section[h[len(h)-1][0]:]
		}
		for _, want := range []string{"gantry status", "/v1/cluster", `"leader"`} {
			if !strings.Contains(section, want) {
				t.Errorf("%s: the pause example does not find the leader first (no %s before it in its section):\n%s",
					path, want, section)
			}
		}
	}
}
