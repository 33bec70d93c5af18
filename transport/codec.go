package transport

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"sync"

	"github.com/gantryhq/gantry/api"
	"github.com/go-json-experiment/json/jsontext"
)

// Header names.
const (
	// HeaderForwarded marks a request a follower forwarded to the leader; the
	// receiver never forwards it again (one hop at most). Its value is the
	// forwarding master's ID.
	HeaderForwarded = "X-Gantry-Forwarded-By"
	// HeaderIdempotencyKey may carry a submission's idempotency key.
	HeaderIdempotencyKey = "Idempotency-Key"
	// HeaderServedBy names the master that produced the response.
	HeaderServedBy = "X-Gantry-Served-By"
)

// DecodeJSON decodes body into v strictly: unknown fields, wrong types,
// a key named twice in one object (anywhere in the body, the payload
// included: RFC 8259 leaves its meaning open, and encoding/json would keep
// the last), trailing data and empty bodies are 400 errors naming the
// field.
func DecodeJSON(body []byte, v any) error {
	if len(bytes.TrimSpace(body)) == 0 {
		return api.BadRequest("", "the request body is empty; expected a JSON object")
	}
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return decodeError(err)
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return api.BadRequest("", "unexpected data after the JSON object")
	}
	return duplicateKey(body)
}

// duplicateKey returns the 400 for the first key that body names twice in
// one object, or nil. The check is one fast validating pass; only a body
// that fails it (a duplicate, or invalid UTF-8, which encoding/json
// replaces and this check leaves alone) is read again token by token to
// find where.
func duplicateKey(body []byte) error {
	if jsontext.Value(body).IsValid() {
		return nil
	}
	dec := jsontext.NewDecoder(bytes.NewReader(body), jsontext.AllowInvalidUTF8(true))
	for {
		_, err := dec.ReadToken()
		if err == nil {
			continue
		}
		var se *jsontext.SyntacticError
		if errors.As(err, &se) && errors.Is(se.Err, jsontext.ErrDuplicateName) {
			field := pointerField(se.JSONPointer)
			return api.BadRequest(field, "the key %q appears twice in one object; each key may appear once", se.JSONPointer.LastToken())
		}
		return nil
	}
}

// pointerField turns a JSON pointer ("/tasks/3/env/A") into the field
// names errors use ("tasks[3].env.A").
func pointerField(p jsontext.Pointer) string {
	var sb strings.Builder
	for tok := range p.Tokens() {
		if _, err := strconv.Atoi(tok); err == nil && tok != "" && sb.Len() > 0 {
			sb.WriteString("[" + tok + "]")
			continue
		}
		if sb.Len() > 0 {
			sb.WriteByte('.')
		}
		sb.WriteString(tok)
	}
	return sb.String()
}

func decodeError(err error) error {
	var syn *json.SyntaxError
	var typ *json.UnmarshalTypeError
	switch {
	case errors.As(err, &syn):
		return api.BadRequest("", "invalid JSON at byte %d: %v", syn.Offset, syn)
	case errors.As(err, &typ):
		field := typ.Field
		if field == "" {
			return api.BadRequest("", "expected %s, got %s", jsonKind(typ.Type.Kind().String()), typ.Value)
		}
		return api.BadRequest(field, "expected %s, got %s", jsonKind(typ.Type.String()), typ.Value)
	case errors.Is(err, io.ErrUnexpectedEOF), errors.Is(err, io.EOF):
		return api.BadRequest("", "the JSON body ends too early")
	}
	msg := err.Error()
	if rest, ok := strings.CutPrefix(msg, "json: unknown field "); ok {
		name, _ := strconv.Unquote(rest)
		if name == "" {
			name = rest
		}
		return api.BadRequest(name, "unknown field")
	}
	return api.BadRequest("", "invalid JSON: %s", strings.TrimPrefix(msg, "json: "))
}

func jsonKind(goType string) string {
	switch {
	case strings.HasPrefix(goType, "int"), strings.HasPrefix(goType, "uint"):
		return "an integer"
	case strings.HasPrefix(goType, "float"):
		return "a number"
	case goType == "string":
		return "a string"
	case goType == "bool":
		return "true or false"
	case strings.HasPrefix(goType, "[]"), goType == "slice":
		return "an array"
	case strings.HasPrefix(goType, "map"), goType == "struct", goType == "map":
		return "an object"
	}
	return goType
}

// readBody reads at most limit bytes of r's body; more is api.TooLarge.
func readBody(w http.ResponseWriter, r *http.Request, limit int64) ([]byte, error) {
	if r.Body == nil {
		return nil, nil
	}
	b, err := io.ReadAll(http.MaxBytesReader(w, r.Body, limit))
	if err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			return nil, api.TooLarge("", limit)
		}
		return nil, api.BadRequest("", "reading the body: %v", err)
	}
	return b, nil
}

// jsonBufs recycles the buffers writeJSON encodes into.
var jsonBufs = sync.Pool{New: func() any { return new(bytes.Buffer) }}

// writeJSON writes v with the given status. The body is encoded in full
// first, so it goes out with a Content-Length in one write instead of as
// 4 KiB chunks (a batch answer is tens of KiB; each chunk is a syscall).
func writeJSON(w http.ResponseWriter, status int, v any) {
	buf := jsonBufs.Get().(*bytes.Buffer)
	buf.Reset()
	defer func() {
		if buf.Cap() <= 1<<20 {
			jsonBufs.Put(buf)
		}
	}()
	if err := json.NewEncoder(buf).Encode(v); err != nil {
		buf.Reset()
		status = http.StatusInternalServerError
		fmt.Fprintf(buf, "{\"code\":%q,\"message\":%q}\n", api.CodeInternal, "encoding the answer: "+err.Error())
	}
	h := w.Header()
	h.Set("Content-Type", "application/json")
	h.Set("Content-Length", strconv.Itoa(buf.Len()))
	w.WriteHeader(status)
	_, _ = w.Write(buf.Bytes())
}

// writeError writes err as gantry's error body with its status; 503s carry
// Retry-After.
func writeError(w http.ResponseWriter, err error) {
	var e *api.Error
	if !errors.As(err, &e) {
		e = &api.Error{Code: api.CodeInternal, Status: http.StatusInternalServerError, Message: err.Error()}
	}
	status := e.Status
	if status == 0 {
		status = api.StatusCode(e.Code)
	}
	if status == http.StatusServiceUnavailable {
		w.Header().Set("Retry-After", "1")
	}
	writeJSON(w, status, e)
}

// errorFromResponse turns a non-2xx response into an *api.Error.
func errorFromResponse(resp *http.Response) error {
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	e := &api.Error{}
	if err := json.Unmarshal(b, e); err != nil || e.Message == "" {
		e = &api.Error{Message: fmt.Sprintf("%s: %s", resp.Status, strings.TrimSpace(string(b)))}
	}
	e.Status = resp.StatusCode
	if e.Code == "" {
		e.Code = codeForStatus(resp.StatusCode)
	}
	return e
}

func codeForStatus(status int) string {
	switch status {
	case http.StatusBadRequest:
		return api.CodeBadRequest
	case http.StatusRequestEntityTooLarge:
		return api.CodeTooLarge
	case http.StatusNotFound:
		return api.CodeNotFound
	case http.StatusConflict:
		return api.CodeConflict
	case http.StatusServiceUnavailable:
		return api.CodeUnavailable
	}
	return api.CodeInternal
}
