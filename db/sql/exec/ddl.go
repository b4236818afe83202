package exec

import (
	"encoding/binary"
	"errors"
	"fmt"

	"github.com/auxten/postgresql-parser/pkg/sql/sem/tree"

	"github.com/cumulusdb/cumulus/db/catalog"
	"github.com/cumulusdb/cumulus/db/sql/datum"
	"github.com/cumulusdb/cumulus/db/sql/sqlerr"
	"github.com/cumulusdb/cumulus/db/storage"
)

// splitEvery bounds the writes one engine transaction takes during bulk
// work (COPY, index builds, primary key rebuilds): the engine keeps a
// transaction's writes in memory and pins their pages until commit.
const splitEvery = 5000

// noteWrites counts writes and, past splitEvery, commits the engine
// transaction and continues in a new one. Bulk statements call it between
// rows; atomicity of the SQL transaction is lost for them (a known gap).
func (s *Session) noteWrites(n int) error {
	s.pendingWrites += n
	if s.pendingWrites < splitEvery {
		return nil
	}
	s.pendingWrites = 0
	if !s.syncCommit() {
		s.tx.SetAsync()
	}
	if err := s.tx.Commit(); err != nil {
		return translate(err)
	}
	s.eng.Cat.Publish(s.changes)
	tx, err := s.eng.DB.Begin(true)
	if err != nil {
		return translate(err)
	}
	s.tx, s.changes = tx, &catalog.Changes{}
	return nil
}

func (s *Session) execDDL(st tree.Statement) (*Result, error) {
	switch n := st.(type) {
	case *tree.CreateTable:
		return s.createTable(n)
	case *tree.DropTable:
		for _, tn := range n.Names {
			name := string(tn.TableName)
			t := s.lookupTable(name)
			if t == nil {
				if n.IfExists {
					continue
				}
				return nil, sqlerr.New(sqlerr.UndefinedTable, "table %q does not exist", name)
			}
			if err := s.eng.Cat.Drop(s.tx, s.changes, name); err != nil {
				return nil, err
			}
		}
		return &Result{Tag: "DROP TABLE"}, nil
	case *tree.Truncate:
		for _, tn := range n.Tables {
			name := string(tn.TableName)
			t := s.lookupTable(name)
			if t == nil {
				return nil, sqlerr.New(sqlerr.UndefinedTable, "relation %q does not exist", name)
			}
			nt := t.Clone()
			nt.Gen++
			if err := s.createStorage(nt); err != nil {
				return nil, err
			}
			if err := s.eng.Cat.Put(s.tx, s.changes, nt); err != nil {
				return nil, err
			}
		}
		return &Result{Tag: "TRUNCATE TABLE"}, nil
	case *tree.CreateIndex:
		t := s.lookupTable(string(n.Table.TableName))
		if t == nil {
			return nil, sqlerr.New(sqlerr.UndefinedTable, "relation %q does not exist", string(n.Table.TableName))
		}
		var cols []int
		for _, e := range n.Columns {
			ci := t.ColumnIndex(string(e.Column))
			if ci < 0 {
				return nil, sqlerr.New(sqlerr.UndefinedColumn, "column %q does not exist", string(e.Column))
			}
			cols = append(cols, ci)
		}
		name := string(n.Name)
		if name == "" {
			name = t.Name + "_" + t.Columns[cols[0]].Name + "_idx"
		}
		if ot, _ := s.eng.Cat.FindIndex(s.changes, name); ot != nil {
			if n.IfNotExists {
				return &Result{Tag: "CREATE INDEX"}, nil
			}
			return nil, sqlerr.New(sqlerr.DuplicateTable, "relation %q already exists", name)
		}
		if err := s.addIndex(t, name, cols, n.Unique); err != nil {
			return nil, err
		}
		return &Result{Tag: "CREATE INDEX"}, nil
	case *tree.DropIndex:
		for _, in := range n.IndexList {
			t, _ := s.eng.Cat.FindIndex(s.changes, string(in.Index))
			if t == nil {
				if n.IfExists {
					continue
				}
				return nil, sqlerr.New(sqlerr.UndefinedObject, "index %q does not exist", string(in.Index))
			}
			nt := t.Clone()
			for i, ix := range nt.Indexes {
				if ix.Name == string(in.Index) {
					nt.Indexes = append(nt.Indexes[:i], nt.Indexes[i+1:]...)
					break
				}
			}
			if err := s.eng.Cat.Put(s.tx, s.changes, nt); err != nil {
				return nil, err
			}
		}
		return &Result{Tag: "DROP INDEX"}, nil
	case *tree.AlterTable:
		return s.alterTable(n)
	case *tree.CreateSequence:
		return nil, sqlerr.New(sqlerr.FeatureNotSupported, "sequences are not supported (use SERIAL columns)")
	case *tree.Explain:
		return nil, sqlerr.New(sqlerr.FeatureNotSupported, "EXPLAIN is not supported")
	}
	return nil, sqlerr.New(sqlerr.FeatureNotSupported, "statement %s is not supported", st.StatementTag())
}

func (s *Session) createStorage(t *catalog.Table) error {
	if _, err := s.tx.CreateTable(t.DataName()); err != nil {
		return translate(err)
	}
	for i := range t.Indexes {
		if _, err := s.tx.CreateTable(t.IndexName(&t.Indexes[i])); err != nil {
			return translate(err)
		}
	}
	return nil
}

func (s *Session) createTable(n *tree.CreateTable) (*Result, error) {
	name := string(n.Table.TableName)
	if n.AsSource != nil {
		return nil, sqlerr.New(sqlerr.FeatureNotSupported, "CREATE TABLE AS is not supported")
	}
	if s.lookupTable(name) != nil {
		if n.IfNotExists {
			return &Result{Tag: "CREATE TABLE", Notices: []string{fmt.Sprintf("relation %q already exists, skipping", name)}}, nil
		}
		return nil, sqlerr.New(sqlerr.DuplicateTable, "relation %q already exists", name)
	}
	id, err := s.eng.Cat.NextID(s.tx)
	if err != nil {
		return nil, translate(err)
	}
	t := &catalog.Table{ID: id, Name: name}
	type uniq struct {
		name string
		cols []string
		pk   bool
	}
	var uniques []uniq
	for _, d := range n.Defs {
		switch def := d.(type) {
		case *tree.ColumnTableDef:
			typ, err := typeFromAST(def.Type)
			if err != nil {
				return nil, err
			}
			c := catalog.Column{Name: string(def.Name), Type: typ, NotNull: def.Nullable.Nullability == tree.NotNull}
			if t.ColumnIndex(c.Name) >= 0 {
				return nil, sqlerr.New(sqlerr.DuplicateObject, "column %q specified more than once", c.Name)
			}
			if def.DefaultExpr.Expr != nil {
				c.Default = tree.AsString(def.DefaultExpr.Expr)
			}
			if def.IsSerial {
				c.Default = fmt.Sprintf("nextval('%s_%s_seq')", name, c.Name)
				c.NotNull = true
			}
			if def.PrimaryKey.IsPrimaryKey {
				uniques = append(uniques, uniq{cols: []string{c.Name}, pk: true})
				c.NotNull = true
			} else if def.Unique {
				uniques = append(uniques, uniq{name: string(def.UniqueConstraintName), cols: []string{c.Name}})
			}
			t.Columns = append(t.Columns, c)
		case *tree.UniqueConstraintTableDef:
			u := uniq{name: string(def.Name), pk: def.PrimaryKey}
			for _, e := range def.Columns {
				u.cols = append(u.cols, string(e.Column))
			}
			uniques = append(uniques, u)
		case *tree.IndexTableDef:
			u := uniq{name: string(def.Name)}
			for _, e := range def.Columns {
				u.cols = append(u.cols, string(e.Column))
			}
			uniques = append(uniques, u) // unique=false handled below
			uniques[len(uniques)-1].name = "\x00" + u.name
		case *tree.CheckConstraintTableDef, *tree.ForeignKeyConstraintTableDef, *tree.FamilyTableDef:
			// Accepted, not enforced.
		default:
			return nil, sqlerr.New(sqlerr.FeatureNotSupported, "table definition %s is not supported", tree.AsString(d))
		}
	}
	for _, u := range uniques {
		var cols []int
		for _, cn := range u.cols {
			ci := t.ColumnIndex(cn)
			if ci < 0 {
				return nil, sqlerr.New(sqlerr.UndefinedColumn, "column %q named in key does not exist", cn)
			}
			cols = append(cols, ci)
		}
		if u.pk {
			if len(t.PK) > 0 {
				return nil, sqlerr.New(sqlerr.InvalidTableDefinition, "multiple primary keys for table %q are not allowed", name)
			}
			t.PK = cols
			t.PKName = name + "_pkey"
			if u.name != "" {
				t.PKName = u.name
			}
			for _, ci := range cols {
				t.Columns[ci].NotNull = true
			}
			continue
		}
		unique := true
		iname := u.name
		if len(iname) > 0 && iname[0] == 0 {
			unique, iname = false, iname[1:]
		}
		if iname == "" {
			iname = name + "_" + t.Columns[cols[0]].Name + "_key"
		}
		ixID, err := s.eng.Cat.NextID(s.tx)
		if err != nil {
			return nil, translate(err)
		}
		t.Indexes = append(t.Indexes, catalog.Index{ID: ixID, Name: iname, Cols: cols, Unique: unique})
	}
	if err := s.createStorage(t); err != nil {
		return nil, err
	}
	if err := s.eng.Cat.Put(s.tx, s.changes, t); err != nil {
		return nil, translate(err)
	}
	return &Result{Tag: "CREATE TABLE"}, nil
}

func (s *Session) alterTable(n *tree.AlterTable) (*Result, error) {
	name := n.Table.Parts[0]
	t := s.lookupTable(name)
	if t == nil {
		if n.IfExists {
			return &Result{Tag: "ALTER TABLE"}, nil
		}
		return nil, sqlerr.New(sqlerr.UndefinedTable, "relation %q does not exist", name)
	}
	for _, cmd := range n.Cmds {
		t = s.lookupTable(name)
		switch c := cmd.(type) {
		case *tree.AlterTableAddConstraint:
			switch def := c.ConstraintDef.(type) {
			case *tree.UniqueConstraintTableDef:
				var cols []int
				for _, e := range def.Columns {
					ci := t.ColumnIndex(string(e.Column))
					if ci < 0 {
						return nil, sqlerr.New(sqlerr.UndefinedColumn, "column %q does not exist", string(e.Column))
					}
					cols = append(cols, ci)
				}
				if def.PrimaryKey {
					if err := s.addPrimaryKey(t, string(def.Name), cols); err != nil {
						return nil, err
					}
				} else {
					iname := string(def.Name)
					if iname == "" {
						iname = t.Name + "_" + t.Columns[cols[0]].Name + "_key"
					}
					if err := s.addIndex(t, iname, cols, true); err != nil {
						return nil, err
					}
				}
			case *tree.ForeignKeyConstraintTableDef, *tree.CheckConstraintTableDef:
				// Accepted, not enforced.
			default:
				return nil, sqlerr.New(sqlerr.FeatureNotSupported, "constraint %s is not supported", tree.AsString(def))
			}
		case *tree.AlterTableAddColumn:
			def := c.ColumnDef
			if t.ColumnIndex(string(def.Name)) >= 0 {
				if c.IfNotExists {
					continue
				}
				return nil, sqlerr.New(sqlerr.DuplicateObject, "column %q of relation %q already exists", string(def.Name), name)
			}
			typ, err := typeFromAST(def.Type)
			if err != nil {
				return nil, err
			}
			if def.DefaultExpr.Expr != nil || def.Nullable.Nullability == tree.NotNull {
				return nil, sqlerr.New(sqlerr.FeatureNotSupported, "ADD COLUMN with DEFAULT or NOT NULL is not supported")
			}
			nt := t.Clone()
			nt.Columns = append(nt.Columns, catalog.Column{Name: string(def.Name), Type: typ})
			if err := s.eng.Cat.Put(s.tx, s.changes, nt); err != nil {
				return nil, translate(err)
			}
		default:
			return nil, sqlerr.New(sqlerr.FeatureNotSupported, "ALTER TABLE %s is not supported", tree.AsString(cmd))
		}
	}
	return &Result{Tag: "ALTER TABLE"}, nil
}

// eachRowBatched reads all rows of t in read-only transactions of their
// own (so that bulk rebuilds do not grow one transaction's read set),
// including rows this session wrote before (its transaction is committed
// first).
func (s *Session) eachRowBatched(t *catalog.Table, fn func(key []byte, row Row) error) error {
	if err := s.flushTx(); err != nil {
		return err
	}
	var start []byte = []byte{}
	for {
		type kv struct{ k, v []byte }
		var batch []kv
		err := s.eng.DB.View(func(tx *storage.Tx) error {
			batch = batch[:0]
			st, err := tx.Table(t.DataName())
			if err != nil {
				return err
			}
			return tx.Scan(st, start, nil, func(k, v []byte) bool {
				batch = append(batch, kv{append([]byte(nil), k...), append([]byte(nil), v...)})
				return len(batch) < 4096
			})
		})
		if err != nil {
			return translate(err)
		}
		for _, r := range batch {
			row, err := datum.DecodeRow(r.v, nil, len(t.Columns))
			if err != nil {
				return fmt.Errorf("exec: table %s: %w", t.Name, err)
			}
			if err := fn(r.k, row); err != nil {
				return err
			}
		}
		if len(batch) < 4096 {
			return nil
		}
		start = append(batch[len(batch)-1].k, 0)
	}
}

// flushTx commits the session's engine transaction so far and starts a
// new one (bulk work).
func (s *Session) flushTx() error {
	s.pendingWrites = splitEvery
	return s.noteWrites(0)
}

func (s *Session) addIndex(t *catalog.Table, name string, cols []int, unique bool) error {
	id, err := s.eng.Cat.NextID(s.tx)
	if err != nil {
		return translate(err)
	}
	nt := t.Clone()
	nt.Indexes = append(nt.Indexes, catalog.Index{ID: id, Name: name, Cols: cols, Unique: unique})
	ix := &nt.Indexes[len(nt.Indexes)-1]
	if _, err := s.tx.CreateTable(nt.IndexName(ix)); err != nil {
		return translate(err)
	}
	if err := s.flushTx(); err != nil {
		return err
	}
	rc := &runCtx{s: s}
	w := &tableWriter{t: nt}
	err = s.eachRowBatched(t, func(key []byte, row Row) error {
		if err := w.putIndex(rc, ix, row, key); err != nil {
			return err
		}
		return s.noteWrites(1)
	})
	if err != nil {
		return err
	}
	return translate(s.eng.Cat.Put(s.tx, s.changes, nt))
}

// addPrimaryKey rebuilds t keyed by cols.
func (s *Session) addPrimaryKey(t *catalog.Table, name string, cols []int) error {
	if len(t.PK) > 0 {
		return sqlerr.New(sqlerr.InvalidTableDefinition, "multiple primary keys for table %q are not allowed", t.Name)
	}
	nt := t.Clone()
	nt.PK = cols
	nt.PKName = name
	if name == "" {
		nt.PKName = t.Name + "_pkey"
	}
	for _, c := range cols {
		nt.Columns[c].NotNull = true
	}
	nt.Gen++
	if err := s.createStorage(nt); err != nil {
		return err
	}
	if err := s.flushTx(); err != nil {
		return err
	}
	rc := &runCtx{s: s}
	w := &tableWriter{t: nt}
	err := s.eachRowBatched(t, func(_ []byte, row Row) error {
		if err := w.insert(rc, row, true); err != nil {
			return err
		}
		return s.noteWrites(1 + len(nt.Indexes))
	})
	if err != nil {
		return err
	}
	return translate(s.eng.Cat.Put(s.tx, s.changes, nt))
}

// InvalidTableDefinition is 42P16.
const _ = sqlerr.Internal

// nextval returns the next value of a sequence, outside the caller's
// transaction (sequences are not transactional, as in PostgreSQL).
func (e *Engine) nextval(name string) (int64, error) {
	e.seqMu.Lock()
	defer e.seqMu.Unlock()
	var v int64
	err := e.DB.Update(func(tx *storage.Tx) error {
		m, err := tx.Table(catalog.MetaTable)
		if err != nil {
			return err
		}
		key := []byte("seq/" + name)
		b, ok, err := tx.Get(m, key)
		if err != nil {
			return err
		}
		v = 1
		if ok && len(b) == 8 {
			v = int64(binary.BigEndian.Uint64(b)) + 1
		}
		return tx.Put(m, key, binary.BigEndian.AppendUint64(nil, uint64(v)))
	})
	if err != nil {
		return 0, translate(errors.Join(err))
	}
	return v, nil
}
