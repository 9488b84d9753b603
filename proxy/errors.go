package proxy

import "github.com/jackc/pgx/v5/pgproto3"

// SQLSTATE codes the proxy itself reports.
const (
	codeConnectionFailure    = "08006" // upstream lost mid-session
	codeUnableToConnect      = "08001" // upstream unreachable at connect
	codeProtocolViolation    = "08P01" // malformed or oversized client frame
	codeAdminShutdown        = "57P01" // drain closed an idle session
	codeFeatureNotSupported  = "0A000"
	codeInvalidAuthorization = "28000"
	codeTooManyConnections   = "53300"
	// Postgres's own code for a finished portal executed again (see planExecute).
	codeNotInPrerequisiteState = "55000"
	severityFatal              = "FATAL"
	severityError              = "ERROR"
)

// errorBody is the body of an ErrorResponse (without its type and length).
func errorBody(severity, code, msg string) []byte {
	return appendError(nil, severity, code, msg)[headerLen:]
}

// appendError appends an ErrorResponse from the proxy itself.
func appendError(dst []byte, severity, code, msg string) []byte {
	e := pgproto3.ErrorResponse{
		Severity:            severity,
		SeverityUnlocalized: severity,
		Code:                code,
		Message:             msg,
	}
	out, err := e.Encode(dst)
	if err != nil { // only fails on impossible lengths
		return dst
	}
	return out
}

// isFatalError reports whether an ErrorResponse body has severity FATAL or PANIC: the server
// closes the connection after sending it, so the EOF that follows is not a lost upstream.
func isFatalError(body []byte) bool {
	for len(body) > 0 && body[0] != 0 {
		field := body[0]
		val, rest, ok := cstring(body[1:])
		if !ok {
			return false
		}
		if field == 'V' || field == 'S' {
			s := string(val)
			return s == "FATAL" || s == "PANIC"
		}
		body = rest
	}
	return false
}

// errorField returns one field of an ErrorResponse or NoticeResponse ('C': SQLSTATE, 'M':
// message), or "".
func errorField(body []byte, field byte) string {
	for len(body) > 0 && body[0] != 0 {
		f := body[0]
		val, rest, ok := cstring(body[1:])
		if !ok {
			return ""
		}
		if f == field {
			return string(val)
		}
		body = rest
	}
	return ""
}

// errorMessage renders an ErrorResponse for logs: "SQLSTATE: message".
func errorMessage(body []byte) string {
	return errorField(body, 'C') + ": " + errorField(body, 'M')
}
