// kstatus-read prints how kstatus (sigs.k8s.io/cli-utils/pkg/kstatus/status), the
// library Flux's kustomize-controller and helm-controller use for health checks,
// reads Kubernetes objects.
//
// Usage: kubectl get jr -o json | kstatus-read
//
// Input: one object or a List (`kubectl get -o json`) on stdin.
// Output: one line per object: "<name>\t<status>\t<message>", where status is
// kstatus' own word (InProgress, Failed, Current, Terminating, NotFound, Unknown).
package main

import (
	"fmt"
	"io"
	"os"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/util/json"
	"sigs.k8s.io/cli-utils/pkg/kstatus/status"
)

func main() {
	data, err := io.ReadAll(os.Stdin)
	if err != nil {
		fail(err)
	}
	// Kubernetes' own JSON decoding: whole numbers become int64, as kstatus expects.
	var obj map[string]interface{}
	if err := json.Unmarshal(data, &obj); err != nil {
		fail(err)
	}
	items := []interface{}{obj}
	if list, ok := obj["items"].([]interface{}); ok {
		items = list
	}
	for _, item := range items {
		m, ok := item.(map[string]interface{})
		if !ok {
			fail(fmt.Errorf("not an object: %v", item))
		}
		u := &unstructured.Unstructured{Object: m}
		res, err := status.Compute(u)
		if err != nil {
			fail(err)
		}
		fmt.Printf("%s\t%s\t%s\n", u.GetName(), res.Status, res.Message)
	}
}

func fail(err error) {
	fmt.Fprintln(os.Stderr, "kstatus-read:", err)
	os.Exit(1)
}
