package exec

import (
	"fmt"
	"strings"

	"github.com/auxten/postgresql-parser/pkg/sql/sem/tree"

	"github.com/cumulusdb/cumulus/db/catalog"
	"github.com/cumulusdb/cumulus/db/sql/datum"
	"github.com/cumulusdb/cumulus/db/sql/parse"
	"github.com/cumulusdb/cumulus/db/sql/sqlerr"
)

// Virtual pg_catalog and information_schema tables, generated from the
// catalog on every read: enough for psql's \d family, drivers' type
// lookups and tools that inspect the schema.

type vcol struct {
	name string
	typ  datum.Type
}

type vtable struct {
	name string
	oid  uint32
	cols []vcol
	rows func(s *Session) []Row
}

type virtualNode struct {
	v  *vtable
	cs []col
}

func (n *virtualNode) cols() []col { return n.cs }
func (n *virtualNode) run(rc *runCtx, emit func(Row) error) error {
	if n.v.rows == nil {
		return nil
	}
	for _, r := range n.v.rows(rc.s) {
		if err := emit(r); err != nil {
			return err
		}
	}
	return nil
}

const (
	oidPgCatalog  = 11
	oidPublic     = 2200
	oidInfoSchema = 13000
	oidHeapAM     = 2
	oidBtreeAM    = 403
	oidDatabase   = 16383
	oidUser       = 10
)

func vc(spec string) []vcol {
	var out []vcol
	for _, f := range strings.Fields(spec) {
		name, typ, _ := strings.Cut(f, ":")
		t := datum.TText
		switch typ {
		case "oid":
			t = datum.TOid
		case "name":
			t = datum.TName
		case "int2":
			t = datum.TInt2
		case "int4":
			t = datum.TInt4
		case "int8":
			t = datum.TInt8
		case "bool":
			t = datum.TBool
		case "char":
			t = datum.Type{OID: datum.OIDChar, Typmod: -1}
		case "float4":
			t = datum.TFloat4
		case "regproc":
			t = datum.Type{OID: datum.OIDRegproc, Typmod: -1}
		}
		out = append(out, vcol{name, t})
	}
	return out
}

func b(v bool) datum.Value   { return datum.Bool(v) }
func i(v int64) datum.Value  { return datum.Int(v) }
func t(s string) datum.Value { return datum.Text(s) }
func ch(c byte) datum.Value  { return datum.Text(string([]byte{c})) }

var null = datum.Null

func indexOID(ix *catalog.Index) uint32 { return catalog.FirstOID + 1 + 2*ix.ID }

// pkOID names the primary key's index relation.
func pkOID(tb *catalog.Table) uint32 { return tb.OID() + 1<<20 }

var vtables map[string]*vtable

func virtualTable(schema, name string) *vtable {
	if schema == "information_schema" {
		return vtables["information_schema."+name]
	}
	return vtables[name]
}

func virtualOID(name string) (uint32, bool) {
	if v := vtables[name]; v != nil {
		return v.oid, true
	}
	return 0, false
}

func init() {
	vtables = map[string]*vtable{}
	add := func(name string, oid uint32, cols string, rows func(s *Session) []Row) {
		vtables[name] = &vtable{name: name, oid: oid, cols: vc(cols), rows: rows}
	}
	add("pg_namespace", 2615, "oid:oid nspname:name nspowner:oid nspacl", func(*Session) []Row {
		return []Row{
			{i(oidPgCatalog), t("pg_catalog"), i(oidUser), null},
			{i(oidPublic), t("public"), i(oidUser), null},
			{i(oidInfoSchema), t("information_schema"), i(oidUser), null},
		}
	})
	add("pg_am", 2601, "oid:oid amname:name amhandler:regproc amtype:char", func(*Session) []Row {
		return []Row{{i(oidHeapAM), t("heap"), i(0), ch('t')}, {i(oidBtreeAM), t("btree"), i(0), ch('i')}}
	})
	add("pg_class", 1259, "oid:oid relname:name relnamespace:oid reltype:oid reloftype:oid relowner:oid relam:oid relfilenode:oid "+
		"reltablespace:oid relpages:int4 reltuples:float4 relallvisible:int4 reltoastrelid:oid relhasindex:bool relisshared:bool "+
		"relpersistence:char relkind:char relnatts:int2 relchecks:int2 relhasrules:bool relhastriggers:bool relhassubclass:bool "+
		"relrowsecurity:bool relforcerowsecurity:bool relispopulated:bool relreplident:char relispartition:bool relrewrite:oid "+
		"relfrozenxid:int8 relminmxid:int8 relacl reloptions relpartbound", func(s *Session) []Row {
		var rows []Row
		rel := func(oid uint32, name string, ns int64, am int64, kind byte, natts int, hasIndex bool) Row {
			return Row{i(int64(oid)), t(name), i(ns), i(0), i(0), i(oidUser), i(am), i(int64(oid)), i(0), i(0), datum.Float(0), i(0), i(0),
				b(hasIndex), b(false), ch('p'), ch(kind), i(int64(natts)), i(0), b(false), b(false), b(false), b(false), b(false), b(true),
				ch('d'), b(false), i(0), i(0), i(0), null, null, null}
		}
		for _, tb := range s.eng.Cat.Tables(s.changes) {
			rows = append(rows, rel(tb.OID(), tb.Name, oidPublic, oidHeapAM, 'r', len(tb.Columns), len(tb.PK) > 0 || len(tb.Indexes) > 0))
			if len(tb.PK) > 0 {
				rows = append(rows, rel(pkOID(tb), tb.PKName, oidPublic, oidBtreeAM, 'i', len(tb.PK), false))
			}
			for k := range tb.Indexes {
				ix := &tb.Indexes[k]
				rows = append(rows, rel(indexOID(ix), ix.Name, oidPublic, oidBtreeAM, 'i', len(ix.Cols), false))
			}
		}
		for _, v := range vtables {
			if !strings.Contains(v.name, ".") {
				rows = append(rows, rel(v.oid, v.name, oidPgCatalog, oidHeapAM, 'v', len(v.cols), false))
			}
		}
		return rows
	})
	add("pg_attribute", 1249, "attrelid:oid attname:name atttypid:oid attstattarget:int4 attlen:int2 attnum:int2 attndims:int4 "+
		"attcacheoff:int4 atttypmod:int4 attbyval:bool attalign:char attstorage:char attcompression:char attnotnull:bool atthasdef:bool "+
		"atthasmissing:bool attidentity:char attgenerated:char attisdropped:bool attislocal:bool attinhcount:int4 attcollation:oid "+
		"attacl attoptions attfdwoptions attmissingval", func(s *Session) []Row {
		var rows []Row
		attr := func(rel uint32, name string, typ datum.Type, num int, notNull, hasDef bool) Row {
			coll := int64(0)
			if typ.Kind() == datum.KText {
				coll = 100
			}
			return Row{i(int64(rel)), t(name), i(int64(typ.OID)), i(-1), i(int64(typ.Len())), i(int64(num)), i(0), i(-1), i(int64(typ.Typmod)),
				b(typ.Len() > 0 && typ.Len() <= 8), ch('i'), ch('p'), ch(0), b(notNull), b(hasDef), b(false), t(""), t(""), b(false), b(true), i(0), i(coll),
				null, null, null, null}
		}
		for _, tb := range s.eng.Cat.Tables(s.changes) {
			for k, c := range tb.Columns {
				rows = append(rows, attr(tb.OID(), c.Name, c.Type, k+1, c.NotNull, c.Default != ""))
			}
			if len(tb.PK) > 0 {
				for k, ci := range tb.PK {
					c := tb.Columns[ci]
					rows = append(rows, attr(pkOID(tb), c.Name, c.Type, k+1, false, false))
				}
			}
			for x := range tb.Indexes {
				ix := &tb.Indexes[x]
				for k, ci := range ix.Cols {
					c := tb.Columns[ci]
					rows = append(rows, attr(indexOID(ix), c.Name, c.Type, k+1, false, false))
				}
			}
		}
		return rows
	})
	add("pg_attrdef", 2604, "oid:oid adrelid:oid adnum:int2 adbin", func(s *Session) []Row {
		var rows []Row
		for _, tb := range s.eng.Cat.Tables(s.changes) {
			for k, c := range tb.Columns {
				if c.Default != "" {
					rows = append(rows, Row{i(int64(tb.OID()) + int64(k)<<24), i(int64(tb.OID())), i(int64(k + 1)), t(c.Default)})
				}
			}
		}
		return rows
	})
	add("pg_type", 1247, "oid:oid typname:name typnamespace:oid typowner:oid typlen:int2 typbyval:bool typtype:char typcategory:char "+
		"typispreferred:bool typisdefined:bool typdelim:char typrelid:oid typsubscript:regproc typelem:oid typarray:oid typinput:regproc "+
		"typoutput:regproc typreceive:regproc typsend:regproc typmodin:regproc typmodout:regproc typanalyze:regproc typalign:char "+
		"typstorage:char typnotnull:bool typbasetype:oid typtypmod:int4 typndims:int4 typcollation:oid typdefaultbin typdefault typacl", func(*Session) []Row {
		var rows []Row
		for _, o := range datum.KnownOIDs {
			typ := datum.Type{OID: o, Typmod: -1}
			coll := int64(0)
			if typ.Kind() == datum.KText {
				coll = 100
			}
			elem := int64(0)
			cat := byte('U')
			switch typ.Kind() {
			case datum.KInt, datum.KFloat, datum.KNumeric:
				cat = 'N'
			case datum.KText:
				cat = 'S'
			case datum.KBool:
				cat = 'B'
			case datum.KDate, datum.KTimestamp:
				cat = 'D'
			}
			if o == datum.OIDTextArray {
				elem, cat = datum.OIDText, 'A'
			}
			rows = append(rows, Row{i(int64(o)), t(datum.TypName(o)), i(oidPgCatalog), i(oidUser), i(int64(typ.Len())), b(typ.Len() > 0 && typ.Len() <= 8),
				ch('b'), ch(cat), b(false), b(true), ch(','), i(0), i(0), i(elem), i(0), i(0), i(0), i(0), i(0), i(0), i(0), i(0), ch('i'), ch('p'),
				b(false), i(0), i(-1), i(0), i(coll), null, null, null})
		}
		return rows
	})
	add("pg_index", 2610, "indexrelid:oid indrelid:oid indnatts:int2 indnkeyatts:int2 indisunique:bool indnullsnotdistinct:bool indisprimary:bool "+
		"indisexclusion:bool indimmediate:bool indisclustered:bool indisvalid:bool indcheckxmin:bool indisready:bool indislive:bool "+
		"indisreplident:bool indkey indcollation indclass indoption indexprs indpred", func(s *Session) []Row {
		var rows []Row
		idx := func(oid, rel uint32, cols []int, unique, primary bool) Row {
			var keys []string
			for _, c := range cols {
				keys = append(keys, fmt.Sprint(c+1))
			}
			n := int64(len(cols))
			return Row{i(int64(oid)), i(int64(rel)), i(n), i(n), b(unique), b(false), b(primary), b(false), b(true), b(false), b(true), b(false),
				b(true), b(true), b(false), t(strings.Join(keys, " ")), t(""), t(""), t(""), null, null}
		}
		for _, tb := range s.eng.Cat.Tables(s.changes) {
			if len(tb.PK) > 0 {
				rows = append(rows, idx(pkOID(tb), tb.OID(), tb.PK, true, true))
			}
			for k := range tb.Indexes {
				ix := &tb.Indexes[k]
				rows = append(rows, idx(indexOID(ix), tb.OID(), ix.Cols, ix.Unique, false))
			}
		}
		return rows
	})
	add("pg_constraint", 2606, "oid:oid conname:name connamespace:oid contype:char condeferrable:bool condeferred:bool convalidated:bool "+
		"conrelid:oid contypid:oid conindid:oid conparentid:oid confrelid:oid confupdtype:char confdeltype:char confmatchtype:char "+
		"conislocal:bool coninhcount:int4 connoinherit:bool conkey confkey conpfeqop conppeqop conffeqop confdelsetcols conexclop conbin", func(s *Session) []Row {
		var rows []Row
		for _, tb := range s.eng.Cat.Tables(s.changes) {
			con := func(oid uint32, name string, typ byte, ind uint32, cols []int) Row {
				var keys []string
				for _, c := range cols {
					keys = append(keys, fmt.Sprint(c+1))
				}
				return Row{i(int64(oid)), t(name), i(oidPublic), ch(typ), b(false), b(false), b(true), i(int64(tb.OID())), i(0), i(int64(ind)), i(0), i(0),
					ch(' '), ch(' '), ch(' '), b(true), i(0), b(true), t("{" + strings.Join(keys, ",") + "}"), null, null, null, null, null, null, null}
			}
			if len(tb.PK) > 0 {
				rows = append(rows, con(pkOID(tb)+1<<21, tb.PKName, 'p', pkOID(tb), tb.PK))
			}
			for k := range tb.Indexes {
				ix := &tb.Indexes[k]
				if ix.Unique {
					rows = append(rows, con(indexOID(ix)+1<<21, ix.Name, 'u', indexOID(ix), ix.Cols))
				}
			}
		}
		return rows
	})
	add("pg_database", 1262, "oid:oid datname:name datdba:oid encoding:int4 datlocprovider:char datistemplate:bool datallowconn:bool "+
		"datconnlimit:int4 datfrozenxid:int8 datminmxid:int8 dattablespace:oid datcollate datctype daticulocale datcollversion datacl", func(*Session) []Row {
		return []Row{{i(oidDatabase), t("cumulus"), i(oidUser), i(6), ch('c'), b(false), b(true), i(-1), i(0), i(0), i(1663), t("C.UTF-8"), t("C.UTF-8"), null, null, null}}
	})
	roleCols := "oid:oid rolname:name rolsuper:bool rolinherit:bool rolcreaterole:bool rolcreatedb:bool rolcanlogin:bool rolreplication:bool " +
		"rolconnlimit:int4 rolpassword rolvaliduntil rolbypassrls:bool rolconfig"
	roleRows := func(*Session) []Row {
		return []Row{{i(oidUser), t("cumulus"), b(true), b(true), b(true), b(true), b(true), b(false), i(-1), t("********"), null, b(true), null}}
	}
	add("pg_roles", 11671, roleCols, roleRows)
	add("pg_authid", 1260, roleCols, roleRows)
	add("pg_user", 12000, "usename:name usesysid:oid usecreatedb:bool usesuper:bool userepl:bool usebypassrls:bool passwd valuntil useconfig",
		func(*Session) []Row {
			return []Row{{t("cumulus"), i(oidUser), b(true), b(true), b(false), b(true), t("********"), null, null}}
		})
	add("pg_settings", 12001, "name setting unit category short_desc extra_desc context vartype source min_val max_val enumvals boot_val reset_val",
		func(s *Session) []Row {
			var rows []Row
			for k := range defaultSettings {
				v := t(s.getVar(k))
				rows = append(rows, Row{t(k), v, null, t(""), t(""), null, t("user"), t("string"), t("default"), null, null, null, v, v})
			}
			return rows
		})
	add("pg_tablespace", 1213, "oid:oid spcname:name spcowner:oid spcacl spcoptions", func(*Session) []Row {
		return []Row{{i(1663), t("pg_default"), i(oidUser), null, null}}
	})
	add("pg_collation", 3456, "oid:oid collname:name collnamespace:oid collowner:oid collprovider:char collisdeterministic:bool collencoding:int4 collcollate collctype", func(*Session) []Row {
		return []Row{{i(100), t("default"), i(oidPgCatalog), i(oidUser), ch('d'), b(true), i(-1), null, null}}
	})
	add("pg_description", 2609, "objoid:oid classoid:oid objsubid:int4 description", nil)
	add("pg_inherits", 2611, "inhrelid:oid inhparent:oid inhseqno:int4 inhdetachpending:bool", nil)
	add("pg_trigger", 2620, "oid:oid tgrelid:oid tgparentid:oid tgname:name tgfoid:oid tgtype:int2 tgenabled:char tgisinternal:bool tgconstrrelid:oid tgconstrindid:oid tgconstraint:oid tgdeferrable:bool tginitdeferred:bool tgnargs:int2", nil)
	add("pg_policy", 3256, "oid:oid polname:name polrelid:oid polcmd:char polpermissive:bool polroles polqual polwithcheck", nil)
	add("pg_rewrite", 2618, "oid:oid rulename:name ev_class:oid ev_type:char ev_enabled:char is_instead:bool", nil)
	add("pg_statistic_ext", 3381, "oid:oid stxrelid:oid stxname:name stxnamespace:oid stxowner:oid stxstattarget:int4 stxkeys stxkind", nil)
	add("pg_publication", 6104, "oid:oid pubname:name pubowner:oid puballtables:bool pubinsert:bool pubupdate:bool pubdelete:bool pubtruncate:bool pubviaroot:bool", nil)
	add("pg_publication_rel", 6106, "oid:oid prpubid:oid prrelid:oid prqual prattrs", nil)
	add("pg_publication_namespace", 6237, "oid:oid pnpubid:oid pnnspid:oid", nil)
	add("pg_foreign_table", 3118, "ftrelid:oid ftserver:oid ftoptions", nil)
	add("pg_partitioned_table", 3350, "partrelid:oid partstrat:char partnatts:int2 partdefid:oid", nil)
	add("pg_proc", 1255, "oid:oid proname:name pronamespace:oid proowner:oid prolang:oid prokind:char prorettype:oid proargtypes proretset:bool", nil)
	add("pg_extension", 3079, "oid:oid extname:name extowner:oid extnamespace:oid extrelocatable:bool extversion", nil)
	add("pg_enum", 3501, "oid:oid enumtypid:oid enumsortorder:float4 enumlabel:name", nil)
	add("pg_range", 3541, "rngtypid:oid rngsubtype:oid", nil)
	add("pg_event_trigger", 3466, "oid:oid evtname:name evtevent:name evtowner:oid evtfoid:oid evtenabled:char", nil)
	add("pg_stat_activity", 12002, "datid:oid datname:name pid:int4 usename:name application_name client_addr state query", nil)
	add("pg_locks", 12003, "locktype database:oid relation:oid pid:int4 mode granted:bool", nil)
	add("pg_stat_user_tables", 12004, "relid:oid schemaname:name relname:name seq_scan:int8 n_live_tup:int8 n_dead_tup:int8", nil)
	add("pg_tables", 12005, "schemaname:name tablename:name tableowner:name tablespace:name hasindexes:bool hasrules:bool hastriggers:bool rowsecurity:bool",
		func(s *Session) []Row {
			var rows []Row
			for _, tb := range s.eng.Cat.Tables(s.changes) {
				rows = append(rows, Row{t("public"), t(tb.Name), t("cumulus"), null, b(len(tb.PK) > 0 || len(tb.Indexes) > 0), b(false), b(false), b(false)})
			}
			return rows
		})
	add("pg_indexes", 12006, "schemaname:name tablename:name indexname:name tablespace:name indexdef", func(s *Session) []Row {
		var rows []Row
		for _, tb := range s.eng.Cat.Tables(s.changes) {
			if len(tb.PK) > 0 {
				rows = append(rows, Row{t("public"), t(tb.Name), t(tb.PKName), null, t(indexDefText(tb, tb.PKName, tb.PK, true))})
			}
			for _, ix := range tb.Indexes {
				rows = append(rows, Row{t("public"), t(tb.Name), t(ix.Name), null, t(indexDefText(tb, ix.Name, ix.Cols, ix.Unique))})
			}
		}
		return rows
	})
	add("information_schema.tables", 13001, "table_catalog table_schema table_name table_type", func(s *Session) []Row {
		var rows []Row
		for _, tb := range s.eng.Cat.Tables(s.changes) {
			rows = append(rows, Row{t("cumulus"), t("public"), t(tb.Name), t("BASE TABLE")})
		}
		return rows
	})
	add("information_schema.columns", 13002, "table_catalog table_schema table_name column_name ordinal_position:int4 column_default is_nullable data_type character_maximum_length:int4 numeric_precision:int4 numeric_scale:int4",
		func(s *Session) []Row {
			var rows []Row
			for _, tb := range s.eng.Cat.Tables(s.changes) {
				for k, c := range tb.Columns {
					nullable := "YES"
					if c.NotNull {
						nullable = "NO"
					}
					def := null
					if c.Default != "" {
						def = t(c.Default)
					}
					rows = append(rows, Row{t("cumulus"), t("public"), t(tb.Name), t(c.Name), i(int64(k + 1)), def, t(nullable), t(c.Type.Name()), null, null, null})
				}
			}
			return rows
		})
	add("information_schema.schemata", 13003, "catalog_name schema_name schema_owner", func(*Session) []Row {
		return []Row{{t("cumulus"), t("public"), t("cumulus")}, {t("cumulus"), t("pg_catalog"), t("cumulus")}}
	})
}

func indexDefText(tb *catalog.Table, name string, cols []int, unique bool) string {
	var names []string
	for _, c := range cols {
		names = append(names, tb.Columns[c].Name)
	}
	u := ""
	if unique {
		u = "UNIQUE "
	}
	return fmt.Sprintf("CREATE %sINDEX %s ON public.%s USING btree (%s)", u, name, tb.Name, strings.Join(names, ", "))
}

// indexDef implements pg_get_indexdef.
func (s *Session) indexDef(oid datum.Value) (datum.Value, error) {
	for _, tb := range s.eng.Cat.Tables(s.changes) {
		if len(tb.PK) > 0 && int64(pkOID(tb)) == oid.I {
			return t(indexDefText(tb, tb.PKName, tb.PK, true)), nil
		}
		for _, ix := range tb.Indexes {
			if int64(indexOID(&ix)) == oid.I {
				return t(indexDefText(tb, ix.Name, ix.Cols, ix.Unique)), nil
			}
		}
	}
	return datum.Null, nil
}

// constraintDef implements pg_get_constraintdef.
func (s *Session) constraintDef(oid datum.Value) (datum.Value, error) {
	cols := func(tb *catalog.Table, cs []int) string {
		var names []string
		for _, c := range cs {
			names = append(names, tb.Columns[c].Name)
		}
		return strings.Join(names, ", ")
	}
	for _, tb := range s.eng.Cat.Tables(s.changes) {
		if len(tb.PK) > 0 && int64(pkOID(tb)+1<<21) == oid.I {
			return t("PRIMARY KEY (" + cols(tb, tb.PK) + ")"), nil
		}
		for _, ix := range tb.Indexes {
			if int64(indexOID(&ix)+1<<21) == oid.I {
				return t("UNIQUE (" + cols(tb, ix.Cols) + ")"), nil
			}
		}
	}
	return datum.Null, nil
}

var _ = sqlerr.Internal

// emptyCatalogPlan covers catalog queries that use constructs CumulusDB
// does not implement (set-returning functions, array subscripts) over
// catalogs that are always empty here (publications, policies, ...): such
// a query returns no rows, with columns named from its select list.
func emptyCatalogPlan(st parse.Stmt) stmtPlan {
	sel, ok := st.AST.(*tree.Select)
	if !ok {
		return nil
	}
	empty := false
	for _, name := range []string{"pg_publication", "pg_publication_rel", "pg_policy", "pg_statistic_ext"} {
		if strings.Contains(st.SQL, "pg_catalog."+name+" ") {
			empty = true
		}
	}
	if !empty {
		return nil
	}
	s := sel.Select
	for {
		switch n := s.(type) {
		case *tree.UnionClause:
			s = n.Left.Select
			continue
		case *tree.ParenSelect:
			s = n.Select.Select
			continue
		}
		break
	}
	sc, ok := s.(*tree.SelectClause)
	if !ok {
		return nil
	}
	var cs []col
	for _, se := range sc.Exprs {
		cs = append(cs, col{name: outputName(se), typ: datum.TText})
	}
	return &queryPlan{p: &valuesNode{cs: cs}}
}
