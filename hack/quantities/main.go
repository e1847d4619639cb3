// Reads quantity strings, one a line, and writes "<string>\t<canonical form>\t<in a resource list>" as
// apimachinery parses and canonicalises them ("!" when it refuses one), the last as the API server stores it in a
// pod's resources (rounded up to a milli-unit, SetDefaults_ResourceList): the expected answers of
// tests/unit/test_quantity.py.
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
			fmt.Printf("%s\t!\t!\n", s)
			continue
		}
		n, suf := q.CanonicalizeBytes(nil)
		r := q.DeepCopy()
		r.RoundUp(resource.Milli)
		rn, rsuf := r.CanonicalizeBytes(nil)
		fmt.Printf("%s\t%s%s\t%s%s\n", s, n, suf, rn, rsuf)
	}
}
