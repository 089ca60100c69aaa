package apiserver

import (
	"fmt"
	"net/url"
	"reflect"
	"strconv"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/conversion"
	"k8s.io/apimachinery/pkg/runtime"
)

// addQueryConversions lets the subresource option types (pods/log, exec,
// attach, portforward, proxy) be decoded from query parameters. Kubernetes
// generates these conversions inside kube-apiserver; k8s.io/api does not
// ship them.
func addQueryConversions(s *runtime.Scheme) error {
	for _, obj := range []any{&corev1.PodLogOptions{}, &corev1.PodExecOptions{}, &corev1.PodAttachOptions{},
		&corev1.PodPortForwardOptions{}, &corev1.PodProxyOptions{}, &corev1.NodeProxyOptions{}, &corev1.ServiceProxyOptions{}} {
		err := s.AddConversionFunc((*url.Values)(nil), obj, func(a, b any, _ conversion.Scope) error {
			return DecodeQuery(*a.(*url.Values), b)
		})
		if err != nil {
			return err
		}
	}
	return nil
}

// DecodeQuery sets the fields of the struct pointed to by into from query
// parameters named by the fields' json tags. Supported field types: string,
// bool, integers, pointers to those, []string, []int32 and *metav1.Time.
// Bad values are errors, never panics.
func DecodeQuery(q url.Values, into any) error {
	v := reflect.ValueOf(into)
	if v.Kind() != reflect.Pointer || v.Elem().Kind() != reflect.Struct {
		return fmt.Errorf("decode query: need a pointer to a struct, got %T", into)
	}
	v = v.Elem()
	t := v.Type()
	for i := 0; i < t.NumField(); i++ {
		f := t.Field(i)
		name, _, _ := strings.Cut(f.Tag.Get("json"), ",")
		if name == "" || name == "-" || f.Anonymous {
			continue
		}
		vals, ok := q[name]
		if !ok || len(vals) == 0 {
			continue
		}
		if err := setField(v.Field(i), vals); err != nil {
			return fmt.Errorf("query parameter %q: %w", name, err)
		}
	}
	return nil
}

func setField(fv reflect.Value, vals []string) error {
	if fv.Type() == reflect.TypeOf(&metav1.Time{}) {
		ts, err := time.Parse(time.RFC3339, vals[0])
		if err != nil {
			return err
		}
		fv.Set(reflect.ValueOf(&metav1.Time{Time: ts}))
		return nil
	}
	switch fv.Kind() {
	case reflect.Pointer:
		elem := reflect.New(fv.Type().Elem())
		if err := setField(elem.Elem(), vals); err != nil {
			return err
		}
		fv.Set(elem)
	case reflect.String:
		fv.SetString(vals[0])
	case reflect.Bool:
		fv.SetBool(!(vals[0] == "0" || strings.EqualFold(vals[0], "false")))
	case reflect.Int, reflect.Int32, reflect.Int64:
		n, err := strconv.ParseInt(vals[0], 10, fv.Type().Bits())
		if err != nil {
			return err
		}
		fv.SetInt(n)
	case reflect.Slice:
		out := reflect.MakeSlice(fv.Type(), 0, len(vals))
		for _, s := range vals {
			// "ports=80,8080" and repeated "ports=80&ports=8080" both work.
			for _, part := range strings.Split(s, ",") {
				e := reflect.New(fv.Type().Elem()).Elem()
				if err := setField(e, []string{part}); err != nil {
					return err
				}
				out = reflect.Append(out, e)
				if fv.Type().Elem().Kind() == reflect.String {
					break // commands may contain commas
				}
			}
		}
		fv.Set(out)
	default:
		return fmt.Errorf("unsupported field type %s", fv.Type())
	}
	return nil
}
