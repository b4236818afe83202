package main

import "errors"

// cmdServe runs CumulusDB as a Linux process (the SQL issue fills it in).
func cmdServe(args []string) (int, error) {
	return 2, errors.New("serve: the SQL server is not built yet")
}
