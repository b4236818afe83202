package exec

import (
	"fmt"

	"github.com/auxten/postgresql-parser/pkg/sql/sem/tree"
	"strings"
	"testing"

	"github.com/cumulusdb/cumulus/db/sql/datum"
	"github.com/cumulusdb/cumulus/db/sql/sqlerr"
)

// planShape plans a SELECT and lists its operators, outermost first, so
// tests can check the access paths chosen (there is no EXPLAIN yet).
func planShape(t *testing.T, s *Session, sql string) string {
	t.Helper()
	ps, err := s.Parse(sql)
	if err != nil {
		t.Fatal(err)
	}
	c := &compiler{s: s}
	sp, err := c.planStatement(ps[0].Stmt.AST)
	if err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
	return shapeOf(sp.(*queryPlan).p)
}

func shapeOf(p plan) string {
	var out []string
	var walk func(p plan)
	walk = func(p plan) {
		switch n := p.(type) {
		case *scanNode:
			name := fmt.Sprintf("scan(%s,acc=%d)", n.t.Name, n.acc)
			if n.index != nil {
				name = fmt.Sprintf("scan(%s,index=%s,eq=%d)", n.t.Name, n.index.Name, len(n.eq))
			}
			out = append(out, name)
		case *memoScanNode:
			out = append(out, "memo")
			walk(n.base)
		case *materializeNode:
			out = append(out, "materialize")
			walk(n.in)
		case *hashJoin:
			out = append(out, "hashJoin")
			walk(n.left)
			walk(n.right)
		case *applyJoin:
			out = append(out, "apply")
			walk(n.left)
			walk(n.right)
		case *filterNode:
			walk(n.in)
		case *projectNode:
			walk(n.in)
		case *renameNode:
			walk(n.in)
		case *aggNode:
			out = append(out, "agg")
			walk(n.in)
		case *sortNode:
			out = append(out, "sort")
			walk(n.in)
		case *limitNode:
			walk(n.in)
		default:
			out = append(out, fmt.Sprintf("%T", p))
		}
	}
	walk(p)
	return strings.Join(out, " ")
}

// subqueryShape plans sub as a subquery correlated with table outer.
func subqueryShape(t *testing.T, s *Session, outer, sub string) string {
	t.Helper()
	tbl := s.lookupTable(outer)
	var cs []col
	for i, cc := range tbl.Columns {
		cs = append(cs, col{name: cc.Name, table: outer, typ: cc.Type, tableOID: tbl.OID(), attnum: int16(i + 1)})
	}
	ps, err := s.Parse(sub)
	if err != nil {
		t.Fatal(err)
	}
	c := &compiler{s: s}
	p, err := c.planSelectStmt(ps[0].Stmt.AST.(*tree.Select), &scope{cols: cs})
	if err != nil {
		t.Fatalf("%s: %v", sub, err)
	}
	return shapeOf(p)
}

// TestDerivedTableJoins: an uncorrelated derived table on the right of a
// join is hashed (equi-join) or materialised once, not re-run per row.
func TestDerivedTableJoins(t *testing.T) {
	e, _ := openEngine(t)
	s := e.NewSession()
	run(t, s, "create table o (w int, d int, id int, cnt int, primary key (w, d, id))")
	run(t, s, "create table l (w int, d int, o int, n int, primary key (w, d, o, n))")
	run(t, s, "insert into o values (1,1,1,2),(1,1,2,1),(1,2,1,3),(2,1,1,1)")
	run(t, s, "insert into l values (1,1,1,1),(1,1,1,2),(1,1,2,1),(1,2,1,1),(1,2,1,2),(1,2,1,3),(2,1,1,1)")
	q := "select d, sum(cnt), max(c) from o, (select d ld, count(*) c from l where w = 1 group by d) x where w = 1 and ld = d group by d order by d"
	expect(t, s, q, "1,3,3;2,3,3")
	if sh := planShape(t, s, q); !strings.Contains(sh, "hashJoin") {
		t.Fatalf("derived equi-join not hashed: %s", sh)
	}
	q = "select count(*) from o, (select count(*) c from l) x where cnt < c"
	expect(t, s, q, "4")
	if sh := planShape(t, s, q); !strings.Contains(sh, "materialize") {
		t.Fatalf("uncorrelated derived table not materialised: %s", sh)
	}
	// A derived table that refers to earlier items stays a lateral loop.
	expect(t, s, "select o.id, x.c from o, (select count(*) c from l where l.w = o.w and l.d = o.d and l.o = o.id) x where o.w = 1 order by o.d, o.id", "1,2;2,1;1,3")
	// Nested derived tables joined on their outputs (TPC-C check 3.3.2.11).
	expect(t, s, `select count(*) from (select * from (select w, d, count(*) oc from o group by w, d) a
		join (select w lw, d ld, count(*) lc from l group by w, d) b on a.w = b.lw and a.d = b.ld) ab
		join (select w cw, count(*) cc from o group by w) c on ab.w = c.cw where oc > 0`, "3")
}

// TestGroupByPrimaryKeyDependency: columns of a table whose primary key is
// grouped on may be selected ungrouped (functional dependency), others not.
func TestGroupByPrimaryKeyDependency(t *testing.T) {
	e, _ := openEngine(t)
	s := e.NewSession()
	run(t, s, "create table w (id int primary key, ytd numeric(12,2), name text)")
	run(t, s, "create table h (w_id int, amount numeric(6,2))")
	run(t, s, "insert into w values (1, 30.00, 'a'), (2, 5.00, 'b')")
	run(t, s, "insert into h values (1, 10.00), (1, 20.00), (2, 1.00)")
	expect(t, s, "select id, ytd, w.name, sum(amount) from h, w where w_id = id group by id order by id", "1,30.00,a,30.00;2,5.00,b,1.00")
	expect(t, s, "select count(*) from (select id, ytd, sum(amount) sm from h, w where w_id = id group by id) t where ytd <> sm", "1")
	expectErr(t, s, "select w_id, amount from h group by w_id", "42803")
	run(t, s, "create table k2 (a int, b int, c int, primary key (a, b))")
	expectErr(t, s, "select a, c from k2 group by a", "42803") // only part of the key
	expect(t, s, "select a, b, c from k2 group by a, b", "")
}

// TestCorrelatedMemoScan: a correlated subquery whose correlation the
// access path cannot use scans the table once and probes a hash table;
// results match the naive evaluation, NULL keys never match.
func TestCorrelatedMemoScan(t *testing.T) {
	e, _ := openEngine(t)
	s := e.NewSession()
	run(t, s, "create table c (w int, d int, id int, bal int, primary key (w, d, id))")
	run(t, s, "create table h (cw int, cd int, cid int, amt int)")
	run(t, s, "create index h_cw on h (cw)")
	run(t, s, "insert into c values (1,1,1,0),(1,1,2,0),(1,2,1,0),(1,2,2,0)")
	run(t, s, "insert into h values (1,1,1,5),(1,1,1,6),(1,2,1,7),(1,2,2,null),(2,1,1,100),(1,null,1,50)")
	q := "select c.d, c.id, (select sum(amt) from h where cw = 1 and cd = c.d and cid = c.id) from c where c.w = 1 order by 1, 2"
	expect(t, s, q, "1,1,11;1,2,NULL;2,1,7;2,2,NULL")
	if sh := subqueryShape(t, s, "c", "select sum(amt) from h where cw = 1 and cd = c.d and cid = c.id"); sh != "agg memo scan(h,index=h_cw,eq=1)" {
		t.Fatalf("correlated history lookup not memoised: %s", sh)
	}
	// Extra correlated non-equality conditions are still applied.
	expect(t, s, "select c.id, (select count(*) from h where cw = c.w and cd = c.d and amt > c.id * 5) from c where c.w = 1 and c.d = 1 order by 1", "1,1;2,0")
	// EXISTS and the parameterised form (as sent by drivers).
	expect(t, s, "select count(*) from c where exists (select 1 from h where h.cd = c.d and h.cid = c.id and h.amt is not null)", "2")
	// A correlation the primary key can use keeps the index lookup.
	if sh := subqueryShape(t, s, "h", "select bal from c where c.w = h.cw and c.d = h.cd and c.id = h.cid"); sh != "scan(c,acc=1)" {
		t.Fatalf("point lookup replaced by memo: %s", sh)
	}
}

// TestSecondaryIndexLongerPrefix: a secondary index whose equality prefix
// is longer than the primary key's is preferred.
func TestSecondaryIndexLongerPrefix(t *testing.T) {
	e, _ := openEngine(t)
	s := e.NewSession()
	run(t, s, "create table orders (w int, d int, id int, cust int, primary key (w, d, id))")
	run(t, s, "create index idx_order on orders (w, d, cust, id)")
	run(t, s, "insert into orders values (1,1,1,7),(1,1,2,8),(1,1,3,7),(1,2,1,7)")
	q := "select id from orders where w = 1 and d = 1 and cust = 7 order by id desc limit 1"
	expect(t, s, q, "3")
	if sh := planShape(t, s, q); !strings.Contains(sh, "index=idx_order,eq=3") {
		t.Fatalf("longer index prefix not used: %s", sh)
	}
	if sh := planShape(t, s, "select id from orders where w = 1 and d = 1"); strings.Contains(sh, "index") {
		t.Fatalf("primary key prefix should win a tie: %s", sh)
	}
}

// TestRowValueIn: (a, b) IN ((..), ..) and IN (SELECT a, b ..) with SQL's
// three-valued logic, and IN lists on key columns planned as key lookups
// (points or prefixes), including duplicates, UPDATE/DELETE and FOR UPDATE.
func TestRowValueIn(t *testing.T) {
	e, _ := openEngine(t)
	s := e.NewSession()
	run(t, s, "create table st (w int, i int, q int, primary key (w, i))")
	run(t, s, "create table ol (w int, d int, o int, n int, amt int, primary key (w, d, o, n))")
	run(t, s, "insert into st values (1,1,10),(1,2,20),(1,3,30),(2,1,40),(2,2,null)")
	run(t, s, "insert into ol values (1,1,1,1,5),(1,1,1,2,6),(1,1,2,1,7),(1,2,1,1,8),(1,2,2,1,9)")
	q := "select w, i, q from st where (w, i) in ((1,3),(2,1),(1,3),(9,9)) order by w, i"
	expect(t, s, q, "1,3,30;2,1,40")
	if sh := planShape(t, s, q); sh != fmt.Sprintf("sort scan(st,acc=%d)", accMulti) {
		t.Fatalf("row IN on the key not planned as lookups: %s", sh)
	}
	expect(t, s, "select count(*) from st where i in (2, 2, 3) and w = 1", "2")
	expect(t, s, "select sum(amt) from ol where (w, d, o) in ((1,1,1),(1,2,2))", "20")
	expect(t, s, "select d, sum(amt) from ol where (w, d, o) in ((1,1,1),(1,2,2),(1,1,2)) group by d order by d", "1,18;2,9")
	// Three-valued logic.
	expect(t, s, "select (1, 2) in ((1, 2)), (1, 2) in ((1, 3)), (1, null) in ((1, 2)), (1, null) in ((2, 2)), (1, 2) not in ((1, null), (3, 4))", "t,f,NULL,f,NULL")
	expect(t, s, "select count(*) from st where (w, q) not in ((1, 10), (2, 40))", "2")
	expect(t, s, "select count(*) from st where (w, i) in (select w, d from ol)", "2")
	expectErr(t, s, "select 1 from st where (w, i) in ((1, 2, 3))", sqlerr.SyntaxError)
	expectErr(t, s, "select (1, 2) = (1, 2)", sqlerr.FeatureNotSupported)
	// DML and locking reads through the same access path.
	res := run(t, s, "update st set q = q + 1 where (w, i) in ((1,1),(2,1))")
	if res.Tag != "UPDATE 2" {
		t.Fatalf("tag %q", res.Tag)
	}
	run(t, s, "begin")
	expect(t, s, "select i, q from st where (w, i) in ((2,1),(1,1)) for update", "1,11;1,41")
	run(t, s, "commit")
	res = run(t, s, "delete from ol where (w, d, o) in ((1,1,1),(1,2,1))")
	if res.Tag != "DELETE 3" {
		t.Fatalf("tag %q", res.Tag)
	}
	expect(t, s, "select count(*) from ol", "2")
}

// TestUntypedArithmeticParameter: in SET n = $1 + 1 the parameter takes
// the column's (numeric) type, not text.
func TestUntypedArithmeticParameter(t *testing.T) {
	e, _ := openEngine(t)
	s := e.NewSession()
	run(t, s, "create table d (id int primary key, next_id int, ytd numeric(12,2))")
	run(t, s, "insert into d values (1, 5, 0)")
	up, err := s.Prepare("update d set next_id = $1 + 1 where id = $2", nil)
	if err != nil {
		t.Fatal(err)
	}
	if up.ParamTypes[0] != datum.TInt4 {
		t.Fatalf("$1 + 1 parameter typed %v", up.ParamTypes[0])
	}
	if _, err := s.Execute(up, []datum.Value{datum.Int(41), datum.Int(1)}); err != nil {
		t.Fatal(err)
	}
	expect(t, s, "select next_id from d", "42")
	sel, err := s.Prepare("select 1 + $1, $1 * 2.5 from d", nil)
	if err != nil {
		t.Fatal(err)
	}
	if sel.ParamTypes[0].Kind() != datum.KInt {
		t.Fatalf("1 + $1 parameter typed %v", sel.ParamTypes[0])
	}
}

// TestImpliedEqualities: a = b AND b = $1 lets a's scan use $1 as a key
// even when a's table comes first in FROM.
func TestImpliedEqualities(t *testing.T) {
	e, _ := openEngine(t)
	s := e.NewSession()
	run(t, s, "create table customer (c_w_id int, c_d_id int, c_id int, c_last text, primary key (c_w_id, c_d_id, c_id))")
	run(t, s, "create table warehouse (w_id int primary key, w_tax numeric(4,4))")
	run(t, s, "insert into customer values (1,1,5,'a'),(2,1,5,'b')")
	run(t, s, "insert into warehouse values (1, 0.1), (2, 0.2)")
	q := "select c_last, w_tax from customer, warehouse where w_id = 2 and c_w_id = w_id and c_d_id = 1 and c_id = 5"
	expect(t, s, q, "b,0.2000")
	if sh := planShape(t, s, q); sh != fmt.Sprintf("apply scan(customer,acc=%d) scan(warehouse,acc=%d)", accPoint, accPoint) {
		t.Fatalf("implied key equality not used: %s", sh)
	}
	// LEFT JOIN: the WHERE equality still filters null-extended rows.
	expect(t, s, "select count(*) from warehouse left join customer on c_w_id = w_id and c_id = 6 where c_w_id = w_id and w_id = 1", "0")
}

// TestOrderedRangeScanLimit: ORDER BY the key columns after the equality
// prefix needs no sort, LIMIT stops the scan, and FOR UPDATE locks the
// row returned.
func TestOrderedRangeScanLimit(t *testing.T) {
	e, _ := openEngine(t)
	s := e.NewSession()
	run(t, s, "create table no (w int, d int, o int, primary key (w, d, o))")
	var vals []string
	for o := 1; o <= 300; o++ {
		vals = append(vals, fmt.Sprintf("(1,1,%d),(1,2,%d)", 1000-o, o))
	}
	run(t, s, "insert into no values "+strings.Join(vals, ","))
	q := "select o from no where w = 1 and d = 1 order by o asc limit 1"
	expect(t, s, q, "700")
	if sh := planShape(t, s, q); strings.Contains(sh, "sort") || !strings.HasPrefix(sh, "scan(no") {
		t.Fatalf("ordered scan still sorted: %s", sh)
	}
	expect(t, s, "select o from no where w = 1 and d = 2 and o > 5 order by o limit 3", "6;7;8")
	expect(t, s, "select o from no where w = 1 and d = 2 order by o desc limit 2", "300;299")
	expect(t, s, "select d, o from no where w = 1 order by d, o limit 2", "1,700;1,701")
	expect(t, s, "select o from no where w = 1 and d = 2 order by o limit 2 offset 10", "11;12")
	run(t, s, "begin")
	expect(t, s, "select o from no where w = 1 and d = 2 order by o limit 1 for update", "1")
	run(t, s, "delete from no where w = 1 and d = 2 and o = 1")
	run(t, s, "commit")
	expect(t, s, "select min(o) from no where w = 1 and d = 2", "2")
}
