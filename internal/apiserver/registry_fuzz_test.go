package apiserver

import (
	"bytes"
	"context"
	"errors"
	"reflect"
	"testing"

	apivalidation "k8s.io/apimachinery/pkg/api/validation"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/serializer"
	"k8s.io/apimachinery/pkg/runtime/serializer/protobuf"
	"k8s.io/apimachinery/pkg/util/validation/field"

	"github.com/tether-dev/tether/internal/apiserver/registry"
)

// FuzzDecodeValidate decodes arbitrary JSON or protobuf bodies with the
// hub's scheme as each stored kind, then runs everything the hub runs on
// a decoded object before storing and when printing it: defaulting,
// ObjectMeta and kind validation (create, update against a second fuzzed
// object, status), and the server-side table row. None of it may panic.
func FuzzDecodeValidate(f *testing.F) {
	scheme, err := NewScheme()
	if err != nil {
		f.Fatal(err)
	}
	codecs := serializer.NewCodecFactory(scheme)
	decoder := codecs.UniversalDeserializer()
	resources := registry.Stored()
	pb := protobuf.NewSerializer(scheme, scheme)

	seeds := []string{
		`{"apiVersion":"v1","kind":"Pod","metadata":{"name":"p","namespace":"d"},"spec":{"containers":[{"name":"c","image":"i","ports":[{"containerPort":80}],"livenessProbe":{"httpGet":{"port":80}}}],"initContainers":[{"name":"i","image":"x:1"}]},"status":{"initContainerStatuses":[{"name":"i","state":{"terminated":{"exitCode":1}}}],"containerStatuses":[{"name":"c","restartCount":3,"state":{"waiting":{"reason":"CrashLoopBackOff"}},"lastState":{"terminated":{"finishedAt":"2026-01-01T00:00:00Z"}}}]}}`,
		`{"apiVersion":"v1","kind":"Pod","metadata":{"name":"p","deletionTimestamp":"2026-01-01T00:00:00Z"},"spec":{"readinessGates":[{"conditionType":"x"}],"containers":[{"name":"c","image":""}]}}`,
		`{"apiVersion":"v1","kind":"Service","metadata":{"name":"s"},"spec":{"type":"NodePort","ports":[{"port":80,"nodePort":30080,"targetPort":"http"},{"port":70000}],"selector":{"a":"b"},"clusterIP":"10.96.0.10"}}`,
		`{"apiVersion":"v1","kind":"Service","metadata":{"name":"s"},"spec":{"type":"LoadBalancer","ports":[{"port":1}]},"status":{"loadBalancer":{"ingress":[{"ip":"1.2.3.4"}]}}}`,
		`{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"c","generateName":"g-"},"data":{"a":"b","bad key":"x"},"binaryData":{"a":"AA=="},"immutable":true}`,
		`{"apiVersion":"v1","kind":"Secret","type":"kubernetes.io/tls","stringData":{"tls.crt":"x"},"data":{"k":"AA=="}}`,
		`{"apiVersion":"v1","kind":"Node","metadata":{"name":"n","labels":{"node-role.kubernetes.io/control-plane":""}},"spec":{"podCIDRs":["10.0.0.0/24","bad"],"taints":[{"key":"k","effect":"Bogus"}],"unschedulable":true},"status":{"conditions":[{"type":"Ready","status":"True"}],"addresses":[{"type":"InternalIP","address":"10.0.0.1"}]}}`,
		`{"apiVersion":"v1","kind":"Endpoints","metadata":{"name":"e"},"subsets":[{"addresses":[{"ip":"1.2.3.4"},{"ip":"x"}],"ports":[{"port":0}]}]}`,
		`{"apiVersion":"v1","kind":"Event","metadata":{"name":"e","namespace":"a"},"involvedObject":{"kind":"Pod","name":"p","namespace":"b"},"type":"Odd","count":2}`,
		`{"apiVersion":"v1","kind":"Namespace","metadata":{"name":"UPPER"},"spec":{"finalizers":["kubernetes"]}}`,
		`{"apiVersion":"coordination.k8s.io/v1","kind":"Lease","metadata":{"name":"l"},"spec":{"holderIdentity":"h","leaseDurationSeconds":-1}}`,
		`{"apiVersion":"discovery.k8s.io/v1","kind":"EndpointSlice","metadata":{"name":"e"},"addressType":"IPv5","ports":[{"port":1}],"endpoints":[{"addresses":[]},{"addresses":["1.2.3.4","5.6.7.8","9.9.9.9","1.1.1.1"]}]}`,
		`{"apiVersion":"certificates.k8s.io/v1","kind":"CertificateSigningRequest","metadata":{"name":"c"},"spec":{"request":"AAAA","signerName":"kubernetes.io/kube-apiserver-client","usages":["client auth"]},"status":{"conditions":[{"type":"Approved","status":"True"},{"type":"Denied","status":"True"}]}}`,
		`{"apiVersion":"rbac.authorization.k8s.io/v1","kind":"RoleBinding","metadata":{"name":"r"},"roleRef":{"apiGroup":"rbac.authorization.k8s.io","kind":"Role","name":""},"subjects":[{"kind":"User","name":""},{"kind":"ServiceAccount","name":"x"}]}`,
		`{"apiVersion":"rbac.authorization.k8s.io/v1","kind":"ClusterRole","metadata":{"name":"r"},"rules":[{"verbs":[],"resources":["pods"]},{"verbs":["get"],"nonResourceURLs":["/x"],"resources":["y"]}]}`,
		`{"kind":"Pod"}`, `null`, `{}`, `[]`,
	}
	for i, s := range seeds {
		f.Add([]byte(s), []byte(s), uint8(i))
	}
	// Protobuf seeds: each kind, round-tripped.
	for i, s := range seeds[:15] {
		obj, _, err := decoder.Decode([]byte(s), nil, nil)
		if err != nil {
			continue
		}
		var buf bytes.Buffer
		if err := pb.Encode(obj, &buf); err == nil {
			f.Add(buf.Bytes(), []byte(seeds[(i+1)%15]), uint8(i))
		}
	}

	f.Fuzz(func(t *testing.T, body, oldBody []byte, which uint8) {
		// The body names its kind, or which picks the endpoint.
		r, ok := resourceOf(decoder, body, resources)
		if !ok {
			r = resources[int(which)%len(resources)]
		}
		obj, ok := decodeAs(decoder, body, r)
		if !ok {
			return
		}
		old, haveOld := decodeAs(decoder, oldBody, r)
		exercise(t, r, obj, old, haveOld)
	})
}

func resourceOf(decoder runtime.Decoder, data []byte, resources []registry.Resource) (registry.Resource, bool) {
	obj, _, err := decoder.Decode(data, nil, nil)
	if err != nil {
		return registry.Resource{}, false
	}
	for _, r := range resources {
		if reflect.TypeOf(r.New()) == reflect.TypeOf(obj) {
			return r, true
		}
	}
	return registry.Resource{}, false
}

// decodeAs decodes data into a new r object, as the handler would for a
// request to r's endpoint.
func decodeAs(decoder runtime.Decoder, data []byte, r registry.Resource) (runtime.Object, bool) {
	into := r.New()
	gvk := r.GroupVersion.WithKind(reflect.TypeOf(into).Elem().Name())
	obj, _, err := decoder.Decode(data, &gvk, into)
	if err != nil || reflect.TypeOf(obj) != reflect.TypeOf(into) {
		return nil, false
	}
	return obj, true
}

func exercise(t *testing.T, r registry.Resource, obj, old runtime.Object, haveOld bool) {
	k := r.Kind
	if k.Default != nil {
		k.Default(obj)
		if haveOld {
			k.Default(old)
		}
	}
	if k.PrepareCreate != nil {
		k.PrepareCreate(context.Background(), obj.DeepCopyObject())
	}
	m, err := metaOf(obj)
	if err != nil {
		t.Fatalf("%s: %v", r.Plural, err)
	}
	nameFn := k.NameFn
	if nameFn == nil {
		nameFn = apivalidation.NameIsDNSSubdomain
	}
	_ = apivalidation.ValidateObjectMetaAccessor(m, k.Namespaced, nameFn, field.NewPath("metadata"))
	if k.Validate != nil {
		_ = k.Validate(obj)
	}
	if haveOld {
		if om, err := metaOf(old); err == nil {
			_ = apivalidation.ValidateObjectMetaAccessorUpdate(m, om, field.NewPath("metadata"))
		}
		if k.ValidateUpdate != nil {
			_ = k.ValidateUpdate(obj, old)
			_ = k.ValidateUpdate(old, obj)
		}
		if k.StatusValidate != nil {
			_ = k.StatusValidate(obj, old)
		}
	}
	if k.GracefulDelete != nil {
		_ = k.GracefulDelete(context.Background(), obj.DeepCopyObject(), &metav1.DeleteOptions{})
		_ = k.GracefulDelete(context.Background(), obj.DeepCopyObject(), nil)
	}
	if r.Table.Row != nil {
		if cells := r.Table.Row(obj); len(cells) != len(r.Table.Columns) {
			t.Fatalf("%s: table row has %d cells for %d columns", r.Plural, len(cells), len(r.Table.Columns))
		}
		list := r.NewList()
		if err := setListItems(list, obj); err == nil {
			if _, err := r.Table.ConvertToTable(context.Background(), list, nil); err != nil {
				t.Fatalf("%s: table of a list: %v", r.Plural, err)
			}
		}
	}
}

func metaOf(obj runtime.Object) (metav1.Object, error) {
	o, ok := obj.(metav1.Object)
	if !ok {
		return nil, errors.New("no object meta")
	}
	return o, nil
}

func setListItems(list, item runtime.Object) error {
	v := reflect.ValueOf(list).Elem().FieldByName("Items")
	if !v.IsValid() {
		return errors.New("no Items")
	}
	s := reflect.MakeSlice(v.Type(), 1, 1)
	s.Index(0).Set(reflect.ValueOf(item).Elem())
	v.Set(s)
	return nil
}
