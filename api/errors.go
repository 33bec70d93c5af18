package api

import (
	"errors"
	"fmt"
	"net/http"
)

// Error is gantry's error: a machine-readable code, an HTTP status, a message
// for people and, for bad input, the name of the offending field. It is the
// JSON body of every error response, so errors.Is works across the wire:
// errors.Is(err, api.ErrNotFound) holds for an *Error decoded from a 404.
type Error struct {
	Code    string `json:"code"`
	Message string `json:"error"`
	Field   string `json:"field"`
	Status  int    `json:"-"`
}

// Error returns the message, prefixed with the field when there is one.
func (e *Error) Error() string {
	if e.Field != "" && e.Message == "" {
		return e.Field + ": invalid"
	}
	return e.Message
}

// Is matches any *Error with the same code, so sentinels compare by code.
func (e *Error) Is(target error) bool {
	t, ok := target.(*Error)
	return ok && t.Code == e.Code
}

// Error codes, one per sentinel.
const (
	CodeBadRequest   = "bad_request"
	CodeTooLarge     = "too_large"
	CodeNotFound     = "not_found"
	CodeConflict     = "conflict"
	CodeStaleAttempt = "stale_attempt"
	// CodeIdempotencyConflict: an idempotency key reused with another task.
	CodeIdempotencyConflict = "idempotency_key_conflict"
	CodeNoLeader            = "no_leader"
	CodeNotLeader           = "not_leader"
	CodeUnavailable         = "unavailable"
	CodeInternal            = "internal"
)

// The sentinel errors. Compare with errors.Is; build specific ones with
// BadRequest, Conflictf and friends so the code carries over.
var (
	ErrBadRequest   = &Error{Code: CodeBadRequest, Status: http.StatusBadRequest, Message: "bad request"}
	ErrTooLarge     = &Error{Code: CodeTooLarge, Status: http.StatusRequestEntityTooLarge, Message: "request body too large"}
	ErrNotFound     = &Error{Code: CodeNotFound, Status: http.StatusNotFound, Message: "not found"}
	ErrConflict     = &Error{Code: CodeConflict, Status: http.StatusConflict, Message: "conflict"}
	ErrStaleAttempt = &Error{Code: CodeStaleAttempt, Status: http.StatusConflict, Message: "stale attempt"}
	// ErrIdempotencyConflict is 422, as the IETF Idempotency-Key draft
	// asks for a key reused with a different request.
	ErrIdempotencyConflict = &Error{Code: CodeIdempotencyConflict, Status: http.StatusUnprocessableEntity, Message: "idempotency key conflict"}
	ErrNoLeader            = &Error{Code: CodeNoLeader, Status: http.StatusServiceUnavailable, Message: "no leader"}
	ErrNotLeader           = &Error{Code: CodeNotLeader, Status: http.StatusServiceUnavailable, Message: "not the leader"}
	ErrUnavailable         = &Error{Code: CodeUnavailable, Status: http.StatusServiceUnavailable, Message: "unavailable"}
	ErrInternal            = &Error{Code: CodeInternal, Status: http.StatusInternalServerError, Message: "internal error"}
)

// BadRequest returns a 400 error naming field.
func BadRequest(field, format string, args ...any) *Error {
	msg := fmt.Sprintf(format, args...)
	if field != "" {
		msg = field + ": " + msg
	}
	return &Error{Code: CodeBadRequest, Status: http.StatusBadRequest, Message: msg, Field: field}
}

// TooLarge returns a 413 error naming what exceeded its limit.
func TooLarge(field string, limit int64) *Error {
	msg := fmt.Sprintf("request body exceeds the limit of %d bytes", limit)
	if field != "" {
		msg = fmt.Sprintf("%s: exceeds the limit of %d bytes", field, limit)
	}
	return &Error{Code: CodeTooLarge, Status: http.StatusRequestEntityTooLarge, Message: msg, Field: field}
}

// NotFoundf returns a 404 error.
func NotFoundf(format string, args ...any) *Error {
	return &Error{Code: CodeNotFound, Status: http.StatusNotFound, Message: fmt.Sprintf(format, args...)}
}

// Conflictf returns a 409 error.
func Conflictf(format string, args ...any) *Error {
	return &Error{Code: CodeConflict, Status: http.StatusConflict, Message: fmt.Sprintf(format, args...)}
}

// Stalef returns a 409 error for a result whose attempt is not current.
func Stalef(format string, args ...any) *Error {
	return &Error{Code: CodeStaleAttempt, Status: http.StatusConflict, Message: fmt.Sprintf(format, args...)}
}

// IdempotencyConflict returns the 422 for a key (in field, e.g.
// "idempotency_key" or "tasks[3].idempotency_key") that names task id,
// submitted with another spec.
func IdempotencyConflict(field, key, id string) *Error {
	return &Error{Code: CodeIdempotencyConflict, Status: http.StatusUnprocessableEntity, Field: field,
		Message: fmt.Sprintf("%s: the key %q was used for task %s with a different request; use a new key for a new task", field, key, id)}
}

// Unavailablef returns a 503 error with the given code (CodeNoLeader,
// CodeNotLeader or CodeUnavailable).
func Unavailablef(code, format string, args ...any) *Error {
	return &Error{Code: code, Status: http.StatusServiceUnavailable, Message: fmt.Sprintf(format, args...)}
}

// StatusOf returns the HTTP status for err: the status of an *Error in its
// chain, or 500.
func StatusOf(err error) int {
	var e *Error
	if errors.As(err, &e) && e.Status != 0 {
		return e.Status
	}
	return http.StatusInternalServerError
}

// StatusCode returns the HTTP status that carries code, for errors decoded
// from a body whose status line was lost.
func StatusCode(code string) int {
	for _, s := range []*Error{ErrBadRequest, ErrTooLarge, ErrNotFound, ErrConflict, ErrStaleAttempt, ErrIdempotencyConflict, ErrNoLeader, ErrNotLeader, ErrUnavailable} {
		if s.Code == code {
			return s.Status
		}
	}
	return http.StatusInternalServerError
}

// Retryable reports whether a request that failed with err may succeed if
// sent again (to the same or another master): no leader, not the leader,
// unavailable.
func Retryable(err error) bool {
	return errors.Is(err, ErrNoLeader) || errors.Is(err, ErrNotLeader) || errors.Is(err, ErrUnavailable)
}
