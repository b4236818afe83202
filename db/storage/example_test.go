package storage_test

import (
	"fmt"
	"log"
	"os"
	"path/filepath"

	"github.com/cumulusdb/cumulus/db/storage"
)

func Example() {
	dir, _ := os.MkdirTemp("", "cumulus-example")
	defer os.RemoveAll(dir)
	path := filepath.Join(dir, "db")

	db, err := storage.Open(path, &storage.Options{PoolSize: 16 << 20, WALSize: 4 << 20})
	if err != nil {
		log.Fatal(err)
	}
	// Create a table and fill it in one transaction.
	err = db.Update(func(tx *storage.Tx) error {
		users, err := tx.CreateTable("users")
		if err != nil {
			return err
		}
		for _, name := range []string{"ada", "grace", "barbara"} {
			if err := tx.Put(users, []byte(name), []byte("engineer")); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		log.Fatal(err)
	}
	db.Close()

	// Reopen: committed data is there.
	db, err = storage.Open(path, nil)
	if err != nil {
		log.Fatal(err)
	}
	defer db.Close()
	err = db.View(func(tx *storage.Tx) error {
		users, err := tx.Table("users")
		if err != nil {
			return err
		}
		v, ok, err := tx.Get(users, []byte("grace"))
		fmt.Println(string(v), ok, err)
		return tx.Scan(users, []byte("b"), nil, func(k, v []byte) bool {
			fmt.Println(string(k))
			return true
		})
	})
	if err != nil {
		log.Fatal(err)
	}
	// Output:
	// engineer true <nil>
	// barbara
	// grace
}
