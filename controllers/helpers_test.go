package controllers

import (
	mlv1alpha1 "github.com/modelguard/modelguard/api/v1alpha1"
	"github.com/modelguard/modelguard/test/builders"
)

func testModel(edits ...func(*builders.ProtectedModelWrapper)) *mlv1alpha1.ProtectedModel {
	w := builders.MakeProtectedModel("m", "models").UID("6f1c1f0e-3a55-4c1b-9a57-2b1d8d7e0c11").Generation(1)
	for _, edit := range edits {
		edit(w)
	}
	return w.Defaulted().Obj()
}
