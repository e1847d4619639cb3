// Reads quantity strings, one a line, and writes "<string>\t<canonical form>" as apimachinery parses and
// canonicalises them ("!" when it refuses one): the expected answers of tests/unit/test_quantity.py.
package main

import (
	"bufio"
	"fmt"
	"os"

	"k8s.io/apimachinery/pkg/api/resource"
)

func main() {
	in := bufio.NewScanner(os.Stdin)
	for in.Scan() {
		s := in.Text()
		q, err := resource.ParseQuantity(s)
		if err != nil {
			fmt.Printf("%s\t!\n", s)
			continue
		}
		n, suf := q.CanonicalizeBytes(nil)
		fmt.Printf("%s\t%s%s\n", s, n, suf)
	}
}
