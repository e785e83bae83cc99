package engine

import (
	"fmt"
	"testing"
)

func TestInternerHoldsOnlyLearnedNamesAndIsBounded(t *testing.T) {
	in := Interner{strings: map[string]string{}, lists: map[string][]string{}}
	in.Learn("allow-chat", "model-allowed")
	for i := 0; i < 3000; i++ {
		b := []byte(fmt.Sprintf("user-%d@example.com", i))
		if got := in.Intern(b); got != string(b) {
			t.Fatalf("intern(%q) = %q", b, got)
		}
		b[0] = 'X' // the caller's buffer is reused: returned strings must not share it
	}
	if n := len(in.strings); n != 2 {
		t.Errorf("a request's strings entered the table: %d kept", n)
	}
	b := []byte("allow-chat")
	if got := in.Intern(b); got != "allow-chat" {
		t.Errorf("learned name: %q", got)
	}
	if got := in.Split("allow-chat\nmodel-allowed"); len(got) != 2 || got[1] != "model-allowed" || len(in.lists) != 1 {
		t.Errorf("split of learned names: %q, %d lists kept", got, len(in.lists))
	}
	if got := in.Split("allow-chat\nsomething-else"); len(got) != 2 || len(in.lists) != 1 {
		t.Errorf("a list with an unknown name was kept: %q, %d lists", got, len(in.lists))
	}
	for i := 0; i < InternMax+100; i++ {
		in.Learn(fmt.Sprintf("rule-%d", i))
	}
	if n := len(in.strings); n != InternMax {
		t.Errorf("%d names kept, want the cap %d", n, InternMax)
	}
}
