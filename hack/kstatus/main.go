// Command kstatus prints the kstatus verdict (Current, InProgress, Failed, Terminating) of
// each Kubernetes object file named on its command line, as Flux computes it before a
// Kustomization's `wait` or `healthChecks` pass: with the status package of
// github.com/fluxcd/cli-utils, the kstatus library Flux's controllers use. hack/testenv.sh
// builds it at the version pinned in hack/testenv.versions; the tests compare its verdicts
// with the documented ones on status objects the operator really wrote.
//
// Output: one JSON object per file and line, {"file", "status", "message"}.
package main

import (
	"encoding/json"
	"fmt"
	"os"

	"github.com/fluxcd/cli-utils/pkg/kstatus/status"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"sigs.k8s.io/yaml"
)

type verdict struct {
	File    string `json:"file"`
	Status  string `json:"status"`
	Message string `json:"message"`
}

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: kstatus OBJECT.yaml...")
		os.Exit(2)
	}
	out := json.NewEncoder(os.Stdout)
	for _, file := range os.Args[1:] {
		result, err := compute(file)
		if err != nil {
			fmt.Fprintf(os.Stderr, "%s: %v\n", file, err)
			os.Exit(1)
		}
		if err := out.Encode(verdict{File: file, Status: result.Status.String(), Message: result.Message}); err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
	}
}

func compute(file string) (*status.Result, error) {
	text, err := os.ReadFile(file)
	if err != nil {
		return nil, err
	}
	// Through JSON into Unstructured, as from the API server: integers stay int64, which
	// the library's observedGeneration check requires.
	document, err := yaml.YAMLToJSON(text)
	if err != nil {
		return nil, err
	}
	object := &unstructured.Unstructured{}
	if err := object.UnmarshalJSON(document); err != nil {
		return nil, err
	}
	return status.Compute(object)
}
