package transport

import (
	"encoding/json"
	"fmt"
	"testing"

	"github.com/gantryhq/gantry/api"
)

// BenchmarkDecode measures the request decoders, the strict duplicate-key
// check included: one task, and a batch of 100.
func BenchmarkDecode(b *testing.B) {
	one := []byte(`{"args":["sh","-c","echo hello"],"env":{"REGION":"eu"},"timeout":"30s","max_attempts":3,"priority":5,"payload":{"user":42}}`)
	var specs []api.TaskSpec
	for i := range 100 {
		specs = append(specs, api.TaskSpec{Args: []string{"sh", "-c", fmt.Sprintf("echo %d", i)}, Env: map[string]string{"N": fmt.Sprint(i)}, IdempotencyKey: fmt.Sprintf("key-%d", i)})
	}
	batch, _ := json.Marshal(api.BatchRequest{Tasks: specs})
	b.Run("submit", func(b *testing.B) {
		b.SetBytes(int64(len(one)))
		for b.Loop() {
			if _, err := DecodeSubmit(one, "k"); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("batch100", func(b *testing.B) {
		b.SetBytes(int64(len(batch)))
		for b.Loop() {
			if _, err := DecodeBatch(batch); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("duplicateCheck/batch100", func(b *testing.B) {
		b.SetBytes(int64(len(batch)))
		for b.Loop() {
			if err := duplicateKey(batch); err != nil {
				b.Fatal(err)
			}
		}
	})
}
