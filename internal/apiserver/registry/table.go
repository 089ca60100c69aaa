package registry

import (
	"context"
	"fmt"
	"time"

	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/util/duration"
	"k8s.io/apiserver/pkg/registry/rest"
)

// Table is a server-side table convertor: the columns kubectl prints for a
// kind and a function that fills one row.
type Table struct {
	Columns []metav1.TableColumnDefinition
	Row     func(obj runtime.Object) []any
}

var _ rest.TableConvertor = Table{}

// col builds a column definition; wide columns (priority 1) show with -o wide.
func col(name, typ string, wide bool, desc string) metav1.TableColumnDefinition {
	c := metav1.TableColumnDefinition{Name: name, Type: typ, Description: desc}
	if name == "Name" {
		c.Format = "name"
	}
	if wide {
		c.Priority = 1
	}
	return c
}

// ConvertToTable turns an object or a list into rows carrying the objects.
func (t Table) ConvertToTable(_ context.Context, object runtime.Object, opts runtime.Object) (*metav1.Table, error) {
	table := &metav1.Table{}
	if to, ok := opts.(*metav1.TableOptions); !ok || !to.NoHeaders {
		table.ColumnDefinitions = t.Columns
	}
	add := func(obj runtime.Object) error {
		table.Rows = append(table.Rows, metav1.TableRow{Cells: t.Row(obj), Object: runtime.RawExtension{Object: obj}})
		return nil
	}
	if meta.IsListType(object) {
		if err := meta.EachListItem(object, add); err != nil {
			return nil, fmt.Errorf("table: %w", err)
		}
		if l, err := meta.ListAccessor(object); err == nil {
			table.ResourceVersion = l.GetResourceVersion()
			table.SelfLink = l.GetSelfLink()
			table.Continue = l.GetContinue()
			table.RemainingItemCount = l.GetRemainingItemCount()
		}
	} else {
		if err := add(object); err != nil {
			return nil, err
		}
		if m, err := meta.Accessor(object); err == nil {
			table.ResourceVersion = m.GetResourceVersion()
		}
	}
	return table, nil
}

// age formats a creation timestamp as kubectl does ("5m", "3d").
func age(ts metav1.Time) string {
	if ts.IsZero() {
		return "<unknown>"
	}
	return duration.HumanDuration(time.Since(ts.Time))
}

// nameAge is the table of kinds that print only NAME and AGE.
func nameAge() Table {
	return Table{
		Columns: []metav1.TableColumnDefinition{col("Name", "string", false, "Name"), col("Age", "string", false, "Age")},
		Row: func(obj runtime.Object) []any {
			m, _ := meta.Accessor(obj)
			return []any{m.GetName(), age(m.GetCreationTimestamp())}
		},
	}
}

// nameCreatedAt is the table RBAC roles print (NAME, CREATED AT).
func nameCreatedAt() Table {
	return Table{
		Columns: []metav1.TableColumnDefinition{col("Name", "string", false, "Name"), col("Created At", "date", false, "Creation timestamp")},
		Row: func(obj runtime.Object) []any {
			m, _ := meta.Accessor(obj)
			return []any{m.GetName(), m.GetCreationTimestamp().UTC().Format(time.RFC3339)}
		},
	}
}
