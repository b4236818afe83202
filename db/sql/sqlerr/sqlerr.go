// Package sqlerr defines SQL errors that carry a PostgreSQL SQLSTATE code,
// so every layer can say what went wrong in terms a client understands.
package sqlerr

import (
	"errors"
	"fmt"
)

// SQLSTATE codes used by CumulusDB.
const (
	SuccessfulCompletion   = "00000"
	FeatureNotSupported    = "0A000"
	CardinalityViolation   = "21000"
	DataException          = "22000"
	StringTruncation       = "22001"
	NumericOutOfRange      = "22003"
	InvalidDatetime        = "22007"
	DivisionByZero         = "22012"
	InvalidText            = "22P02"
	BadCopyFormat          = "22P04"
	InvalidTableDefinition = "42P16"
	InvalidParameterValue  = "22023"
	NotNullViolation       = "23502"
	UniqueViolation        = "23505"
	InvalidTxState         = "25000"
	ActiveTx               = "25001"
	NoActiveTx             = "25P01"
	InFailedTx             = "25P02"
	InvalidAuthorization   = "28000"
	InvalidPassword        = "28P01"
	SerializationFailure   = "40001"
	DeadlockDetected       = "40P01"
	SyntaxError            = "42601"
	UndefinedColumn        = "42703"
	UndefinedFunction      = "42883"
	UndefinedTable         = "42P01"
	UndefinedObject        = "42704"
	DuplicateTable         = "42P07"
	DuplicateObject        = "42710"
	AmbiguousColumn        = "42702"
	DatatypeMismatch       = "42804"
	GroupingError          = "42803"
	InvalidColumnReference = "42P10"
	UndefinedParameter     = "42P02"
	ProtocolViolation      = "08P01"
	QueryCanceled          = "57014"
	AdminShutdown          = "57P01"
	ProgramLimitExceeded   = "54000"
	InsufficientResources  = "53000"
	Internal               = "XX000"
)

// Error is a SQL error with a SQLSTATE code.
type Error struct {
	Code     string
	Severity string // "ERROR" unless set
	Message  string
	Detail   string
	Hint     string
	Err      error // wrapped cause, if any
}

func (e *Error) Error() string {
	if e.Detail != "" {
		return e.Message + " (" + e.Detail + ")"
	}
	return e.Message
}

func (e *Error) Unwrap() error { return e.Err }

// New returns an error with a code and a formatted message.
func New(code, format string, args ...any) *Error {
	return &Error{Code: code, Message: fmt.Sprintf(format, args...)}
}

// Wrap returns an error with a code whose message is msg: cause.
func Wrap(code string, cause error, msg string) *Error {
	return &Error{Code: code, Message: msg + ": " + cause.Error(), Err: cause}
}

// Code returns the SQLSTATE of err: its own if it is (or wraps) an *Error,
// otherwise Internal.
func Code(err error) string {
	var e *Error
	if errors.As(err, &e) {
		return e.Code
	}
	return Internal
}

// As returns err as an *Error, converting other errors to Internal ones.
func As(err error) *Error {
	var e *Error
	if errors.As(err, &e) {
		if e.Message == "" {
			e.Message = err.Error()
		}
		return e
	}
	return &Error{Code: Internal, Message: err.Error(), Err: err}
}
